use std::time::Duration;

use durable::prelude::*;

#[durable]
async fn seconds_without_a_unit(_ctx: &Ctx, _: ()) -> Result<(), String> {
    step!("fetch", timeout = 30, Ok::<(), String>(()))
}

#[durable]
async fn a_string(_ctx: &Ctx, _: ()) -> Result<(), String> {
    step!("fetch", timeout = "30s", Ok::<(), String>(()))
}

#[durable]
async fn not_a_duration(_ctx: &Ctx, _: ()) -> Result<(), String> {
    let limit: u64 = 30;
    step!("fetch", timeout = limit, Ok::<(), String>(()))
}

#[durable]
async fn fine(_ctx: &Ctx, _: ()) -> Result<(), String> {
    step!("fetch", timeout = Duration::from_secs(30), Ok::<(), String>(()))
}

fn main() {}
