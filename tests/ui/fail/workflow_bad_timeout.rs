use durable::prelude::*;

#[durable(timeout = "3 weeks")]
async fn no_such_unit(_ctx: &Ctx, _: ()) -> Result<(), String> {
    Ok(())
}

#[durable(timeout = 30)]
async fn not_a_string(_ctx: &Ctx, _: ()) -> Result<(), String> {
    Ok(())
}

#[durable(timeout = "0s")]
async fn zero(_ctx: &Ctx, _: ()) -> Result<(), String> {
    Ok(())
}

#[durable(timeout = "3d")]
async fn fine(_ctx: &Ctx, _: ()) -> Result<(), String> {
    Ok(())
}

fn main() {}
