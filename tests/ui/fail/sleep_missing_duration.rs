use durable::prelude::*;

#[durable]
async fn onboarding(_ctx: &Ctx, _input: u32) {
    sleep!("cool-off");
    sleep_until!("launch",);
}

fn main() {}
