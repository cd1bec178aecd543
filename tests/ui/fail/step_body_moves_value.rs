use durable::prelude::*;

async fn consume(names: Vec<String>) -> Result<usize, String> {
    Ok(names.len())
}

#[durable]
async fn provision(_ctx: &Ctx, names: Vec<String>) -> Result<usize, String> {
    step!("consume", consume(names).await)
}

fn main() {}
