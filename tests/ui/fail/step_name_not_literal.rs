use durable::prelude::*;

async fn charge() -> Result<u32, String> {
    Ok(1)
}

#[durable]
async fn provision(_ctx: &Ctx, _input: u32) -> Result<u32, String> {
    let name = "charge-card";
    let a = step!(name, charge().await)?;
    let b = step!(123, charge().await)?;
    Ok(a + b)
}

fn main() {}
