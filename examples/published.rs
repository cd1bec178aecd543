//! Published state, streams and idempotent events: an import workflow
//! publishes its progress (`ctx.set_event`) for outside code to read
//! (`get_event`, with a wait), appends a log line per batch
//! (`ctx.write_stream`) that `main` follows (`read_stream_timeout`), and
//! takes its batch size from a webhook that is delivered twice
//! (`send_event_with_key`: the retry is a no-op).
//!
//! ```sh
//! cargo run --example published
//! ```
//! The store is a fresh directory under the system temp dir, removed at the
//! end.

use std::time::Duration;

use durable::prelude::*;

/// Copies `n` rows after the first `done` (a stand-in for real work).
async fn copy(done: u32, n: u32) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(done + n)
}

#[durable]
async fn import(ctx: &Ctx, rows: u32) -> Result<u32, String> {
    let publish_error = |e: Error| e.to_string();
    ctx.set_event("status", &"waiting for the batch size".to_string())
        .await
        .map_err(publish_error)?;
    let batch: u32 = wait_for!("batch-size");
    ctx.set_event("status", &"copying".to_string())
        .await
        .map_err(publish_error)?;
    let mut done = 0;
    while done < rows {
        done = step!("copy", copy(done, batch.min(rows - done)).await)?;
        // Checkpointed: after a crash, the replay does not publish it again.
        ctx.set_event("progress", &(done, rows))
            .await
            .map_err(publish_error)?;
        ctx.write_stream("log", &format!("copied {done} of {rows} rows"))
            .await
            .map_err(publish_error)?;
    }
    ctx.set_event("status", &"done".to_string())
        .await
        .map_err(publish_error)?;
    Ok(done)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("durable-published-{}", std::process::id()));
    let engine = Engine::builder().path(&dir).register(import).open().await?;
    let handle = engine.start(import, "import-1", 1000).await?;

    // Outside code waits for the first published value.
    let status: Option<String> = engine
        .get_event_timeout("import-1", "status", Duration::from_secs(10))
        .await?;
    println!("status: {status:?}");

    // A webhook delivers the batch size, and its sender retries it: the
    // delivery id makes the second send a no-op.
    for attempt in 1..=2 {
        let stored = engine
            .send_event_with_key("import-1", "batch-size", 250u32, "delivery-81")
            .await?;
        println!("webhook attempt {attempt}: stored = {stored}");
    }

    let progress: Option<(u32, u32)> = engine
        .get_event_timeout("import-1", "progress", Duration::from_secs(10))
        .await?;
    println!("progress: {progress:?}");

    // Follow the log: each line once, in order, waiting for new ones.
    let mut offset = 0;
    while offset < 4 {
        let (lines, next) = engine
            .read_stream_timeout::<String>("import-1", "log", offset, Duration::from_secs(10))
            .await?;
        for line in lines {
            println!("log: {line}");
        }
        offset = next;
    }

    let copied = handle.result().await?;
    println!("result: {copied:?}");
    let progress: Option<(u32, u32)> = engine.get_event("import-1", "progress").await?;
    let status: Option<String> = engine.get_event("import-1", "status").await?;
    println!("final progress: {progress:?}, status: {status:?}");
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
