//! Child workflows: an order workflow starts a payment as a child and
//! awaits it, then fans out one shipment child per parcel with at most two
//! running at once (`ctx.run_children`). The histories link parent and
//! children. A second order's parent is cancelled while its payment child
//! waits for an approval: the child is cancelled with it.
//!
//! ```sh
//! cargo run --example children
//! ```
//! The store is a fresh directory under the system temp dir, removed at the
//! end.

use std::time::Duration;

use durable::Status;
use durable::prelude::*;

#[durable]
async fn pay(_ctx: &Ctx, cents: u64) -> Result<String, String> {
    if cents > 100_000 {
        // Large payments wait for a person.
        let approved: bool = wait_for!("approved");
        if !approved {
            return Err("declined".into());
        }
    }
    step!(
        "charge",
        async { Ok::<_, String>(format!("ch_{cents}")) }.await
    )
}

#[durable]
async fn ship(_ctx: &Ctx, parcel: u32) -> Result<String, String> {
    step!(
        "label",
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, String>(format!("label-{parcel}"))
        }
        .await
    )
}

#[durable]
async fn order(ctx: &Ctx, (cents, parcels): (u64, u32)) -> Result<Vec<String>, String> {
    let text = |e: Error| e.to_string();
    // Checkpointed like a step: a replay after a crash attaches to the
    // same child instead of starting a second payment.
    let payment = ctx.start_child(pay, None, cents).await.map_err(text)?;
    let charge = payment.result().await.map_err(text)??;
    // One child per parcel, two at a time; results in parcel order.
    let labels = ctx.run_children(ship, 1..=parcels, 2).await.map_err(text)?;
    let mut out = vec![charge];
    for label in labels {
        out.push(label.map_err(text)??);
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("durable-children-{}", std::process::id()));
    let engine = Engine::builder()
        .path(&dir)
        .register(order)
        .register(pay)
        .register(ship)
        .open()
        .await?;

    let done = engine.run(order, "order-1", (4_200, 5)).await?;
    println!("order-1: {done:?}");
    let history = engine.history("order-1").await?;
    println!("order-1 children: {:?}", history.children);
    let child = engine.history("order-1/ship-2").await?;
    println!("order-1/ship-2 parent: {:?}", child.parent);

    // A large payment waits for approval; cancelling the order cancels it.
    let big = engine.start(order, "order-2", (250_000, 1)).await?;
    while !matches!(
        engine.status("order-2/pay-0").await,
        Ok(Status::Waiting { .. })
    ) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.cancel("order-2").await?;
    println!(
        "order-2: {:?}",
        big.result().await.map_err(|e| e.to_string())
    );
    println!("order-2/pay-0: {:?}", engine.status("order-2/pay-0").await?);

    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
