#![deny(unused_variables)]

use durable::prelude::*;

async fn charge() -> Result<u32, String> {
    Ok(1)
}

#[durable]
async fn provision(ctx: &Ctx, input: u32) -> Result<u32, String> {
    let unused = 5;
    step!("charge-card", charge().await)
}

fn main() {}
