//! Cron schedules and debouncing: a report workflow scheduled every second
//! (six-field cron, seconds first) runs once per tick with the tick's time
//! as its input; a reindex workflow is debounced: five quick calls start
//! one instance, with the last call's input, once the calls stop.
//!
//! ```sh
//! cargo run --example schedules
//! ```
//! The store is a fresh directory under the system temp dir, removed at the
//! end. The example runs on the wall clock for about three seconds.

use std::time::Duration;

use durable::prelude::*;
use durable::{Debounce, Missed, Schedule, Status, Tick};

#[durable]
async fn report(ctx: &Ctx, tick: Tick) -> Result<u64, String> {
    let _ = ctx;
    let at = tick.at_ms;
    step!("render", async { Ok::<_, String>(at) }.await)
}

#[durable]
async fn reindex(_ctx: &Ctx, document: String) -> Result<String, String> {
    step!(
        "index",
        async { Ok::<_, String>(format!("indexed {document}")) }.await
    )
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("durable-schedules-{}", std::process::id()));
    let engine = Engine::builder()
        .path(&dir)
        .register(report)
        .register(reindex)
        .open()
        .await?;

    // Every second; adding it again at the next start-up changes nothing.
    let every_second = Schedule::new("every-second", "* * * * * *")?.missed(Missed::RunLatest);
    engine.add_schedule(report, every_second).await?;

    // Five edits in quick succession: one reindex, of the last version.
    let window = Debounce::new(Duration::from_millis(500)).max_wait(Duration::from_secs(10));
    let mut id = String::new();
    for edit in 1..=5 {
        id = engine
            .debounce(reindex, "doc-7", format!("doc-7 v{edit}"), window)
            .await?;
    }
    let out = engine.attach(reindex, id.as_str()).await;
    // The instance exists once the window passed after the last call.
    let out = match out {
        Ok(handle) => handle.result().await?,
        Err(_) => loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(handle) = engine.attach(reindex, id.as_str()).await {
                break handle.result().await?;
            }
        },
    };
    println!("{id}: {out:?}");

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    engine.pause_schedule("every-second").await?;
    for s in engine.schedules().await? {
        println!(
            "schedule {} ({}) of {}: paused {}, last tick {} ms",
            s.name, s.cron, s.workflow, s.paused, s.last_tick_ms
        );
    }
    let page = engine
        .list(&durable::ListFilter::new().workflow("report"))
        .await?;
    for instance in &page.instances {
        if let Status::Completed { .. } = instance.status {
            println!("ran {}", instance.id);
        }
    }
    engine.remove_schedule("every-second").await?;
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
