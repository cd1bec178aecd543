use durable::prelude::*;

#[durable]
async fn provision() -> Result<u32, String> {
    Ok(1)
}

fn main() {}
