use durable::prelude::*;

#[durable]
async fn onboarding(_ctx: &Ctx, _input: u32) -> u32 {
    let name = "cool-off";
    sleep!(name, std::time::Duration::from_secs(60));
    sleep_until!(format!("launch"), std::time::SystemTime::now());
    wait_for!(42)
}

fn main() {}
