use durable::prelude::*;

async fn charge() -> Result<u32, String> {
    Ok(1)
}

#[durable]
async fn provision(_ctx: &Ctx, _input: u32) -> Result<u32, String> {
    let first = step!("charge-card", charge().await)?;
    let again = step!("charge-card", charge().await)?;
    Ok(first + again)
}

fn main() {}
