use durable::prelude::*;

#[derive(Debug)]
struct Failure;

async fn charge() -> Result<u32, Failure> {
    Ok(1)
}

#[durable]
async fn provision(_ctx: &Ctx, input: u32) -> Result<u32, String> {
    let charged = step!("charge-card", charge().await).map_err(|e| format!("{e:?}"))?;
    Ok(input + charged)
}

fn main() {}
