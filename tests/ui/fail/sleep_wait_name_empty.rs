use durable::prelude::*;
use std::time::{Duration, SystemTime};

#[durable]
async fn onboarding(_ctx: &Ctx, _input: u32) -> u32 {
    sleep!("", Duration::from_secs(60));
    sleep_until!(" ", SystemTime::now());
    wait_for!("")
}

fn main() {}
