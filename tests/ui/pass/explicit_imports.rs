//! `step!` is rewritten in place, so the user's own `use durable::step`
//! counts as used: no `unused_imports` even when denied.

#![deny(unused_imports)]

use durable::{Ctx, durable, step};

#[durable]
async fn imported(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    step!("only", Ok::<u32, String>(n))
}

fn main() {
    let _ = imported;
}
