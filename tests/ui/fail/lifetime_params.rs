use durable::prelude::*;

#[durable]
async fn provision<'a>(_ctx: &'a Ctx, input: u32) -> Result<u32, String> {
    Ok(input)
}

fn main() {}
