//! `crate = "..."` points the generated code at a re-export of `durable`,
//! for users who renamed or re-export the crate.

mod reexport {
    pub use durable as inner;
}

use durable::{Ctx, durable, step};

#[durable(crate = "crate::reexport::inner")]
async fn via_reexport(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    step!("one", Ok::<u32, String>(n))
}

fn main() {
    use durable::{IntoWorkflow, Workflow};
    fn steps<I: IntoWorkflow>(_: I) -> Vec<&'static str> {
        <I::Workflow as Workflow>::SITES.iter().map(|s| s.name).collect()
    }
    assert_eq!(steps(via_reexport), ["one"]);
}
