use durable::prelude::*;

#[durable]
async fn provision<T: serde::Serialize>(_ctx: &Ctx, input: T) -> Result<T, String> {
    Ok(input)
}

fn main() {}
