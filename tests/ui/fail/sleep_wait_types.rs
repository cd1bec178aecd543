use durable::prelude::*;
use std::time::Duration;

struct NotSerde;

#[durable]
async fn onboarding(_ctx: &Ctx, _input: u32) {
    sleep!("cool-off", 60);
    sleep_until!("launch", Duration::from_secs(60));
    let _payload: NotSerde = wait_for!("approval");
    let _late: Option<u32> = wait_for!("late", timeout = 5u64);
}

#[durable]
async fn untyped(_ctx: &Ctx, _input: u32) {
    wait_for!("payload-of-unknown-type");
}

fn main() {}
