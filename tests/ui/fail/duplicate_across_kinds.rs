use durable::prelude::*;
use std::time::Duration;

async fn draft() -> Result<u32, String> {
    Ok(1)
}

#[durable]
async fn onboarding(_ctx: &Ctx, _input: u32) -> Result<u32, String> {
    step!("create-draft", draft().await)?;
    sleep!("cool-off", Duration::from_secs(60));
    let approval: u32 = wait_for!("approval");
    sleep!("create-draft", Duration::from_secs(60));
    let late: Option<u32> = wait_for!("cool-off", timeout = Duration::from_secs(60));
    let again: u32 = wait_for!("approval");
    Ok(approval + late.unwrap_or(0) + again)
}

fn main() {}
