//! `sleep!`, `sleep_until!` and `wait_for!` are rewritten in place, like
//! `step!`, so the user's own imports of them count as used: no
//! `unused_imports` even when denied.

#![deny(unused_imports)]

use durable::sleep_until;
use durable::{Ctx, durable, sleep, wait_for};
use std::time::{Duration, SystemTime};

#[durable]
async fn imported(_ctx: &Ctx, n: u64) -> u64 {
    sleep!("nap", Duration::from_secs(n));
    sleep_until!("until", SystemTime::UNIX_EPOCH + Duration::from_secs(n));
    let payload: u64 = wait_for!("event");
    let late: Option<u64> = wait_for!("late", timeout = Duration::from_secs(n));
    payload + late.unwrap_or(0)
}

fn main() {
    let _ = imported;
}
