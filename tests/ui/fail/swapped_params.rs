use durable::prelude::*;

#[durable]
async fn provision(input: u32, ctx: &Ctx) -> Result<u32, String> {
    let _ = ctx;
    Ok(input)
}

fn main() {}
