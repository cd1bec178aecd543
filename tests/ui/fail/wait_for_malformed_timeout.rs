use durable::prelude::*;

#[durable]
async fn onboarding(_ctx: &Ctx, _input: u32) -> Option<u32> {
    let timeout = std::time::Duration::from_secs(60);
    let a: Option<u32> = wait_for!("manager-approval", timeout);
    let b: Option<u32> = wait_for!("hr-approval", timeout =);
    let c: Option<u32> = wait_for!("it-approval", std::time::Duration::from_secs(60));
    a.or(b).or(c)
}

fn main() {}
