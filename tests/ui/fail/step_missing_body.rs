use durable::prelude::*;

#[durable]
async fn provision(_ctx: &Ctx, _input: u32) -> Result<u32, String> {
    step!("charge-card")
}

fn main() {}
