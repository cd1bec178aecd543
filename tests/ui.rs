//! Guards what users see at compile time: every misuse of `#[durable]`,
//! `step!`, `sleep!`, `sleep_until!` and `wait_for!` fails with one precise message at the offending token (the
//! `.stderr` files are the exact text), and every supported shape of
//! workflow compiles.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
