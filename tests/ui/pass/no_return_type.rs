//! A workflow with no return type has output `()`, and may still use
//! `step!` (handling its result inside) and early `return`.

#![deny(warnings)]

use durable::prelude::*;
use durable::{IntoWorkflow, Workflow};

async fn ping(n: u32) -> Result<u32, String> {
    Ok(n)
}

#[durable]
async fn fire_and_forget(_ctx: &Ctx, n: u32) {
    if n == 0 {
        return;
    }
    if let Err(error) = step!("ping", ping(n).await) {
        println!("ping failed: {error}");
    }
}

fn main() {
    fn output_is_unit<I: IntoWorkflow<Workflow: Workflow<Output = ()>>>(_: I) {}
    output_is_unit(fire_and_forget);
}
