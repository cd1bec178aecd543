use durable::prelude::*;

async fn charge() -> Result<u32, String> {
    Ok(1)
}

#[durable(name = "", retri = 3)]
async fn provision(_ctx: &Ctx, _input: u32) -> Result<u32, String> {
    let a = step!("charge-card", charge().await)?;
    let b = step!("create-account", charge().await)?;
    let c = step!("charge-card", charge().await)?;
    let d = step!("", charge().await)?;
    let (e, f) = tokio::join!(
        step!("create-account", charge().await),
        step!("ok", charge().await)
    );
    Ok(a + b + c + d + e? + f?)
}

fn main() {}
