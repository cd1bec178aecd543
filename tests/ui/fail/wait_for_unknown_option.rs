use durable::prelude::*;

#[durable]
async fn onboarding(_ctx: &Ctx, _input: u32) -> Option<u32> {
    let d = std::time::Duration::from_secs(60);
    wait_for!("manager-approval", timout = d)
}

fn main() {}
