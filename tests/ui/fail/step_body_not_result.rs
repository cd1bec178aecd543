use durable::prelude::*;

async fn charge() -> Result<u32, String> {
    Ok(1)
}

#[durable]
async fn provision(_ctx: &Ctx, input: u32) -> Result<u32, String> {
    let a = step!("plain-value", input + 1)?;
    let b = step!("forgot-await", charge())?;
    Ok(a + b)
}

fn main() {}
