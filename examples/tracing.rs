//! What the runtime tells a `tracing` subscriber: one span per instance run,
//! one per step (attempts inside it), events for retries, parks, wake-ups,
//! events and the end, and one span per group commit.
//!
//! ```sh
//! cargo run --example tracing                       # info and above
//! RUST_LOG=durable_runtime=debug cargo run --example tracing   # attempts, parks, commits
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable::prelude::*;
use tracing_subscriber::EnvFilter;

static CALLS: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn onboard(ctx: &Ctx, user: String) -> Result<String, String> {
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .initial_delay(Duration::from_millis(20));
    // Fails once, then succeeds: a retry event between two attempts.
    let account = step!(
        "create-account",
        retry = policy,
        async {
            if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("the accounts service timed out".to_string())
            } else {
                Ok(format!("acct-{user}"))
            }
        }
        .await
    )?;
    // A wait long enough to park the instance until the event arrives.
    let approved: bool = wait_for!("approval");
    if !approved {
        return Err(format!("{} was not approved", ctx.id()));
    }
    step!("send-welcome", Ok::<_, String>(()))?;
    Ok(account)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let dir = tempfile::tempdir()?;
    let engine = Engine::builder()
        .path(dir.path())
        .register(onboard)
        .open()
        .await?;
    let handle = engine.start(onboard, "user-7", "ada".to_string()).await?;
    // Wait until it parks in `wait_for!`, then approve.
    while !matches!(
        engine.status("user-7").await?,
        durable::Status::Waiting { .. }
    ) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.send_event("user-7", "approval", true).await?;
    println!("result: {:?}", handle.result().await?);
    engine.shutdown().await;
    Ok(())
}
