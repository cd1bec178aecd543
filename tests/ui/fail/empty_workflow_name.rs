use durable::prelude::*;

#[durable(name = "")]
async fn provision(_ctx: &Ctx, input: u32) -> Result<u32, String> {
    Ok(input)
}

fn main() {}
