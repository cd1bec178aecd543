use durable::prelude::*;

#[durable]
async fn provision(_ctx: &Ctx, signup: Sigunp) -> Result<Reciept, String> {
    let _ = signup;
    step!("charge-card", Ok::<u32, String>(1))?;
    Err("no".into())
}

fn main() {}
