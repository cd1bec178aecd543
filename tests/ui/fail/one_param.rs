use durable::prelude::*;

#[durable]
async fn provision(_ctx: &Ctx) -> Result<u32, String> {
    Ok(1)
}

fn main() {}
