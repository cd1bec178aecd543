//! Saga compensation: a trip books a car and a hotel, then the payment is
//! declined; the hotel and then the car are cancelled, in reverse order,
//! each checkpointed like a step. A second trip is cancelled while it
//! waits for a confirmation: its completed bookings are undone, then it
//! ends cancelled.
//!
//! ```sh
//! cargo run --example saga
//! ```
//! The store is a fresh directory under the system temp dir, removed at the
//! end.

use std::time::Duration;

use durable::Status;
use durable::prelude::*;

async fn book(what: &str, who: &str) -> Result<String, String> {
    Ok(format!("{what} for {who}"))
}

async fn cancel_booking(booking: String) -> Result<(), String> {
    println!("  undo: cancelled {booking}");
    Ok(())
}

#[durable]
async fn trip(_ctx: &Ctx, (who, card_ok): (String, bool)) -> Result<String, String> {
    let car = step!(
        "car",
        book("car", &who).await,
        compensate = |car: String| async move { cancel_booking(car).await }
    )?;
    let hotel = step!(
        "hotel",
        book("hotel", &who).await,
        compensate = |hotel: String| async move { cancel_booking(hotel).await }
    )?;
    // A person confirms the trip (the second trip is cancelled here).
    let _confirmed: bool = wait_for!("confirmed");
    step!(
        "pay",
        async {
            if card_ok {
                Ok(())
            } else {
                Err(permanent("card declined".to_string()))
            }
        }
        .await
    )?;
    Ok(format!("{car} + {hotel}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("durable-saga-{}", std::process::id()));
    let engine = Engine::builder().path(&dir).register(trip).open().await?;

    println!("trip-1: the card is declined");
    let first = engine
        .start(trip, "trip-1", ("ada".to_string(), false))
        .await?;
    engine.send_event("trip-1", "confirmed", true).await?;
    println!("trip-1: {:?}", first.result().await?);

    println!("trip-2: cancelled while it waits for the confirmation");
    let second = engine
        .start(trip, "trip-2", ("bob".to_string(), true))
        .await?;
    while !matches!(engine.status("trip-2").await?, Status::Waiting { .. }) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.cancel("trip-2").await?;
    println!(
        "trip-2: {:?}",
        second.result().await.map_err(|e| e.to_string())
    );
    for t in engine.history("trip-2").await?.transitions {
        println!("  trip-2 history: {:?}", t.kind);
    }

    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
