use durable::prelude::*;

async fn charge() -> Result<u32, String> {
    Ok(1)
}

#[durable]
async fn provision(_ctx: &Ctx, _input: u32) -> Result<u32, String> {
    async fn helper() -> Result<u32, String> {
        step!("charge-card", charge().await)
    }
    helper().await
}

fn main() {}
