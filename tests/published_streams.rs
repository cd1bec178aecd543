//! Streams (`Ctx::write_stream`, `Engine::read_stream`) followed
//! incrementally, and published state and streams kept by a fork, on the
//! embedded store. (A `write_stream` across a SIGKILL is in
//! `tests/published.rs`.)

mod support;

use std::path::Path;
use std::time::Duration;

use durable::Status;
use durable::prelude::*;

async fn open(dir: &Path) -> Engine {
    Engine::builder()
        .path(dir.join("store"))
        .register(staged)
        .register(streamer)
        .open()
        .await
        .unwrap()
}

async fn wait_status(engine: &Engine, id: &str, waiting: bool) {
    support::wait_until("the instance's status", async || {
        match engine.status(id).await {
            Ok(Status::Waiting { .. }) if waiting => Ok(()),
            Ok(Status::Completed { .. }) if !waiting => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[durable]
async fn staged(ctx: &Ctx, _n: u32) -> Result<u64, String> {
    let text = |e: Error| e.to_string();
    ctx.set_event("stage", &"one".to_string())
        .await
        .map_err(text)?;
    ctx.write_stream("stages", &1u32).await.map_err(text)?;
    step!("middle", Ok::<_, String>(()))?;
    ctx.write_stream("stages", &2u32).await.map_err(text)?;
    let go: u64 = wait_for!("go");
    ctx.set_event("stage", &"two".to_string())
        .await
        .map_err(text)?;
    Ok(go)
}

/// A fork keeps what the steps before its fork point published: its new
/// instance replays those `set_event`s and `write_stream`s (writing
/// nothing) and starts with their state and stream entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_starts_with_the_state_published_before_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let stage = async |id: &str| engine.get_event::<String>(id, "stage").await.unwrap();
    let out = support::guarded("the original completes", async {
        let handle = engine.start(staged, "orig", 0).await.unwrap();
        engine.send_event("orig", "go", 1u64).await.unwrap();
        handle.result().await
    })
    .await;
    assert_eq!(out.unwrap(), Ok(1));
    assert_eq!(stage("orig").await.as_deref(), Some("two"));
    // Each set_event is a step occurrence of its reserved name.
    let history = engine.history("orig").await.unwrap();
    let sets = history
        .steps
        .iter()
        .filter(|s| s.name == "durable::set_event")
        .count();
    assert_eq!(sets, 2, "{:?}", history.steps);

    engine.fork("orig", "middle", "copy").await.unwrap();
    assert_eq!(stage("copy").await.as_deref(), Some("one"));
    let stages = engine
        .read_stream::<u32>("copy", "stages", 0)
        .await
        .unwrap();
    assert_eq!(
        stages.0.first(),
        Some(&1),
        "kept from before the fork point"
    );
    wait_status(&engine, "copy", true).await;
    assert_eq!(stage("copy").await.as_deref(), Some("one"));
    engine.send_event("copy", "go", 2u64).await.unwrap();
    wait_status(&engine, "copy", false).await;
    assert_eq!(stage("copy").await.as_deref(), Some("two"));
    assert_eq!(stage("orig").await.as_deref(), Some("two"));
    let stages = engine
        .read_stream::<u32>("copy", "stages", 0)
        .await
        .unwrap();
    assert_eq!(stages, (vec![1, 2], 2));
    engine.shutdown().await;
}

#[durable]
async fn streamer(ctx: &Ctx, n: u32) -> Result<u32, String> {
    let text = |e: Error| e.to_string();
    for i in 0..n {
        let offset = ctx.write_stream("numbers", &i).await.map_err(text)?;
        if offset != u64::from(i) {
            return Err(format!("value {i} got offset {offset}"));
        }
    }
    let more: u32 = wait_for!("more");
    for i in n..n + more {
        ctx.write_stream("numbers", &i).await.map_err(text)?;
    }
    Ok(n + more)
}

/// A reader follows a stream with waits: each value once, in order, the
/// later ones as they are appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_read_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let handle = engine.start(streamer, "s", 3).await.unwrap();
    let mut seen: Vec<u32> = Vec::new();
    let mut offset = 0;
    let mut sent = false;
    while seen.len() < 5 {
        if seen.len() == 3 && !sent {
            // No value after the third one yet: an empty read at the end.
            wait_status(&engine, "s", true).await;
            let empty = engine
                .read_stream_timeout::<u32>("s", "numbers", offset, Duration::from_millis(50))
                .await
                .unwrap();
            assert_eq!(empty, (vec![], 3));
            engine.send_event("s", "more", 2u32).await.unwrap();
            sent = true;
        }
        let (values, next) = engine
            .read_stream_timeout::<u32>("s", "numbers", offset, support::hang_guard())
            .await
            .unwrap();
        assert!(!values.is_empty());
        assert_eq!(next, offset + values.len() as u64);
        seen.extend(values);
        offset = next;
    }
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    let out = support::guarded("the instance completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(5));
    let tail = engine.read_stream::<u32>("s", "numbers", 3).await.unwrap();
    assert_eq!(tail, (vec![3, 4], 5));
    let wrong = engine.read_stream::<String>("s", "numbers", 0).await;
    assert!(
        matches!(
            wrong,
            Err(Error::Usage(UsageError::PublishedTypeMismatch { .. }))
        ),
        "{wrong:?}"
    );
    let unknown = engine.read_stream::<u32>("nosuch", "numbers", 0).await;
    assert!(
        matches!(unknown, Err(Error::Usage(UsageError::NotFound { .. }))),
        "{unknown:?}"
    );
    engine.shutdown().await;
}
