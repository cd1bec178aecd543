use durable::prelude::*;

#[durable]
async fn booking(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    let a = step!("no-closure", async { Ok::<_, String>(n) }.await, compensate);
    let b = step!("literal", async { Ok::<_, String>(n) }.await, compensate = 5);
    let c = step!(
        "two-args",
        async { Ok::<_, String>(n) }.await,
        compensate = |x: u32, y: u32| async move { Ok::<_, String>(()) }
    );
    let d = step!(
        "twice",
        compensate = |x: u32| async move { Ok::<_, String>(()) },
        async { Ok::<_, String>(n) }.await,
        compensate = |x: u32| async move { Ok::<_, String>(()) }
    );
    Ok(a? + b? + c? + d?)
}

fn main() {}
