use durable::prelude::*;

async fn not_a_workflow(_ctx: &Ctx) -> u32 {
    sleep!("cool-off", std::time::Duration::from_secs(60));
    sleep_until!("launch", std::time::SystemTime::now());
    wait_for!("approval")
}

fn main() {}
