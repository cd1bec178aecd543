use durable::prelude::*;

#[durable]
async fn provision(input: u32, other: u32) -> Result<u32, String> {
    Ok(input + other)
}

fn main() {}
