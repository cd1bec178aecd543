//! The fn's attributes carry over: docs and lint levels apply to the
//! workflow, `cfg` removes it whole, `#[expect]` is fulfilled once.

#![deny(warnings)]

use durable::prelude::*;

/// A documented workflow: the doc lands on the workflow value.
#[allow(unused_variables)]
#[durable]
pub async fn documented(ctx: &Ctx, input: u32) -> Result<u32, String> {
    let unused = 1;
    step!("one", Ok::<u32, String>(2))
}

#[cfg(any())]
#[durable]
async fn compiled_out(ctx: &Ctx, input: DoesNotExist) -> Result<u32, String> {
    step!("never", Ok(1))
}

#[durable]
#[expect(unused_variables)]
async fn expected(_ctx: &Ctx, input: u32) -> Result<u32, String> {
    step!("one", Ok::<u32, String>(3))
}

#[durable]
#[deprecated = "use documented"]
async fn old(_ctx: &Ctx, input: u32) -> Result<u32, String> {
    step!("one", Ok::<u32, String>(input))
}

#[allow(deprecated)]
fn main() {
    let _ = (documented, expected, old);
}
