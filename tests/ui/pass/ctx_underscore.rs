//! A context parameter named `_ctx` (unused by the body, used by its steps)
//! compiles without warnings, and so does a destructured input.

#![deny(warnings)]

use durable::prelude::*;

#[durable]
async fn quiet(_ctx: &Ctx, (a, b): (u32, u32)) -> Result<u32, String> {
    step!("add", Ok::<u32, String>(a + b))
}

fn main() {
    let _ = quiet;
}
