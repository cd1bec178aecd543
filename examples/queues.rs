//! Queues with flow control: a signup workflow enqueues a welcome email
//! from inside the workflow (`ctx.enqueue`, checkpointed), and `main`
//! enqueues a backfill of 20 emails in one durable write
//! (`enqueue_many`) on a queue that runs at most 3 at once and 2 per
//! tenant, with priorities and a deduplication id that refuses a second
//! enqueue while the first is pending. It prints the most emails it saw
//! in flight beside the limit.
//!
//! ```sh
//! cargo run --example queues
//! ```
//! The store is a fresh directory under the system temp dir, removed at the
//! end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use durable::prelude::*;
use durable::{EnqueueOptions, Queue};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MAX_SEEN: AtomicUsize = AtomicUsize::new(0);

/// Sends one email (a stand-in that takes a little while).
async fn deliver(to: &str) -> Result<String, String> {
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_SEEN.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    Ok(format!("sent to {to}"))
}

#[durable]
async fn email(_ctx: &Ctx, to: String) -> Result<String, String> {
    step!("deliver", deliver(&to).await)
}

#[durable]
async fn signup(ctx: &Ctx, user: String) -> Result<(), String> {
    step!("create-account", async { Ok::<_, String>(()) }.await)?;
    // Checkpointed: a replay after a crash does not enqueue it again.
    let options = EnqueueOptions::new()
        .priority(-1)
        .dedup(format!("welcome-{user}"));
    ctx.enqueue(
        "emails",
        email,
        format!("welcome-{user}"),
        format!("{user}@example.com"),
        options,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("durable-queues-{}", std::process::id()));
    let engine = Engine::builder()
        .path(&dir)
        .register(email)
        .register(signup)
        .queue(Queue::new("emails").concurrency(3).partition_concurrency(2))
        .open()
        .await?;

    engine
        .run(signup, "signup-ada", "ada".to_string())
        .await??;

    // A backfill: 20 instances recorded in one write.
    let items = (0..20).map(|n| (format!("digest-{n}"), format!("user{n}@example.com")));
    let handles = engine.enqueue_many("emails", email, items).await?;

    // A deduplication id is refused while its instance is pending.
    let urgent = EnqueueOptions::new()
        .priority(-5)
        .partition("tenant-1")
        .dedup("reset-1");
    let first = engine
        .enqueue_with(
            "emails",
            email,
            "reset-1",
            "bob@example.com".into(),
            urgent.clone(),
        )
        .await?;
    let again = engine
        .enqueue_with(
            "emails",
            email,
            "reset-1b",
            "bob@example.com".into(),
            urgent,
        )
        .await;
    println!(
        "second enqueue with the same dedup id: {:?}",
        again.err().map(|e| e.to_string())
    );

    for handle in handles {
        handle.result().await??;
    }
    println!("{}", first.result().await??);
    let welcome = engine
        .attach(email, "welcome-ada")
        .await?
        .result()
        .await??;
    println!("{welcome}");
    for q in engine.queues().await? {
        println!(
            "queue {}: {} pending, {} running",
            q.queue.name(),
            q.pending,
            q.running
        );
    }
    println!(
        "most in flight: {} (limit 3)",
        MAX_SEEN.load(Ordering::SeqCst)
    );
    assert!(MAX_SEEN.load(Ordering::SeqCst) <= 3);
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
