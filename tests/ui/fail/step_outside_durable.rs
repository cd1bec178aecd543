use durable::prelude::*;

async fn charge() -> Result<u32, String> {
    Ok(1)
}

async fn not_a_workflow(_ctx: &Ctx) -> Result<u32, String> {
    step!("charge-card", charge().await)
}

fn main() {}
