use durable::prelude::*;

#[durable]
async fn provision(_ctx: &Ctx, input: u32) -> Result<u32, String> {
    let doubled = step!("double", Ok::<u64, String>(u64::from(input) * 2))?;
    Ok(doubled)
}

fn main() {}
