use durable::prelude::*;

#[durable]
async fn provision(_ctx: &Ctx, email: &str) -> Result<usize, String> {
    Ok(email.len())
}

fn main() {}
