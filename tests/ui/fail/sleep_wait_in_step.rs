use durable::prelude::*;

async fn charge(_approval: u32) -> Result<u32, String> {
    Ok(1)
}

#[durable]
async fn provision(_ctx: &Ctx, _input: u32) -> Result<u32, String> {
    step!("charge-card", {
        sleep!("before-charge", std::time::Duration::from_secs(1));
        charge(wait_for!("approval")).await
    })
}

fn main() {}
