use durable::prelude::*;

#[durable]
async fn provision(_ctx: &Ctx, a: u32, b: u32) -> Result<u32, String> {
    Ok(a + b)
}

fn main() {}
