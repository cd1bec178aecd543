//! Published state, streams and idempotent events across engines that
//! share a PostgreSQL schema and nothing else: a worker publishes and
//! appends, a pure client (an engine that registers no workflow) reads
//! with a wait; two clients send the same keyed event at once and it is
//! delivered once; a worker process killed with SIGKILL after it published
//! is taken over by another, whose replay publishes nothing again.
//!
//! `cargo test --features postgres --test pg_published`. Needs PostgreSQL
//! (`DURABLE_TEST_PG`); without it the tests pass after saying "skipped: no
//! PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

mod support;

use std::time::Duration;

use durable::Status;
use durable::prelude::*;

use support::pg::{Schema, builder_on};

#[durable]
async fn answerer(ctx: &Ctx, base: u64) -> Result<u64, String> {
    ctx.write_stream("log", &"asked".to_string())
        .await
        .map_err(|e| e.to_string())?;
    let question: u64 = wait_for!("question");
    ctx.set_event("answer", &(base + question))
        .await
        .map_err(|e| e.to_string())?;
    ctx.write_stream("log", &format!("answered {question}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(question)
}

async fn wait_waiting(engine: &Engine, id: &str) {
    support::wait_until("the instance waits", async || {
        match engine.status(id).await {
            Ok(Status::Waiting { .. }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// The worker publishes, the client waits for the key and gets it: woken
/// by the worker's notice (`listen`), or by polling alone.
async fn a_client_reads_what_the_worker_publishes(listen: bool) {
    let Some(schema) = Schema::new("durable_pub").await else {
        return;
    };
    let worker = schema
        .builder_with(listen)
        .register(answerer)
        .open()
        .await
        .unwrap();
    let client = schema.builder_with(listen).open().await.unwrap();
    let handle = worker.start(answerer, "ask", 100).await.unwrap();
    wait_waiting(&client, "ask").await;
    assert_eq!(
        client.get_event::<u64>("ask", "answer").await.unwrap(),
        None
    );
    let (got, sent) = tokio::join!(
        client.get_event_timeout::<u64>("ask", "answer", support::hang_guard()),
        async {
            tokio::task::yield_now().await;
            client.send_event("ask", "question", 23u64).await
        }
    );
    sent.unwrap();
    assert_eq!(got.unwrap(), Some(123));
    // The stream, read incrementally by the client.
    let first = client.read_stream::<String>("ask", "log", 0).await.unwrap();
    assert_eq!(first.1, first.0.len() as u64);
    assert_eq!(first.0.first().map(String::as_str), Some("asked"));
    let mut log = first.0;
    let mut offset = first.1;
    while log.len() < 2 {
        let (more, next) = client
            .read_stream_timeout::<String>("ask", "log", offset, support::hang_guard())
            .await
            .unwrap();
        log.extend(more);
        offset = next;
    }
    assert_eq!(log, ["asked", "answered 23"]);
    assert_eq!(offset, 2);
    let out = support::guarded("the instance completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(23));
    // Read again, typed wrong, and for an unknown instance.
    assert_eq!(
        client.get_event::<u64>("ask", "answer").await.unwrap(),
        Some(123)
    );
    let wrong = client.get_event::<String>("ask", "answer").await;
    assert!(
        matches!(
            wrong,
            Err(Error::Usage(UsageError::PublishedTypeMismatch { .. }))
        ),
        "{wrong:?}"
    );
    let unknown = client.get_event::<u64>("nosuch", "answer").await;
    assert!(
        matches!(unknown, Err(Error::Usage(UsageError::NotFound { .. }))),
        "{unknown:?}"
    );
    let never = client
        .get_event_timeout::<u64>("ask", "never", Duration::from_millis(50))
        .await;
    assert_eq!(never.unwrap(), None);
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pure_client_waits_for_published_state_with_notices() {
    a_client_reads_what_the_worker_publishes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pure_client_waits_for_published_state_by_polling() {
    a_client_reads_what_the_worker_publishes(false).await;
}

#[durable]
async fn two_goes(_ctx: &Ctx, _n: u32) -> Result<(u64, u64), String> {
    let mut got = Vec::new();
    for _ in 0..2 {
        let go: u64 = wait_for!("go");
        got.push(go);
    }
    Ok((got[0], got[1]))
}

/// Two clients send the same keyed event at once, to each of several
/// instances: one send stores it, the other is a no-op; the instance's
/// second `go` is the one sent under another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_sending_the_same_key_deliver_once() {
    let Some(schema) = Schema::new("durable_pub").await else {
        return;
    };
    let worker = schema
        .builder_with(true)
        .register(two_goes)
        .open()
        .await
        .unwrap();
    let one = schema.builder_with(true).open().await.unwrap();
    let two = schema.builder_with(true).open().await.unwrap();
    const N: u64 = 8;
    let mut handles = Vec::new();
    for i in 0..N {
        handles.push(
            worker
                .start(two_goes, format!("goes-{i}"), 0)
                .await
                .unwrap(),
        );
    }
    for i in 0..N {
        let id = format!("goes-{i}");
        let (a, b) = tokio::join!(
            one.send_event_with_key(&id, "go", 10 * i + 1, "webhook-1"),
            two.send_event_with_key(&id, "go", 10 * i + 2, "webhook-1"),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a != b, "exactly one of two sends stores the event: {a} {b}");
        // A retry from either client later is a no-op too.
        assert!(
            !one.send_event_with_key(&id, "go", 99u64, "webhook-1")
                .await
                .unwrap()
        );
        assert!(
            two.send_event_with_key(&id, "go", 10 * i + 3, "webhook-2")
                .await
                .unwrap()
        );
        let winner = if a { 10 * i + 1 } else { 10 * i + 2 };
        let out = support::guarded("the instance completes", handles.remove(0).result()).await;
        assert_eq!(out.unwrap(), Ok((winner, 10 * i + 3)));
    }
    for engine in [one, two, worker] {
        engine.shutdown().await;
    }
    schema.drop_schema().await;
}

const CHILD_ENV: &str = "DURABLE_PG_PUBLISH_CHILD";
const DIR_ENV: &str = "DURABLE_PG_PUBLISH_DIR";

async fn hold(dir: &str) -> Result<u32, String> {
    support::ledger_in(dir, "BEGIN hold");
    if std::env::var_os(CHILD_ENV).is_some() {
        // In flight until the parent kills this process.
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    Ok(7)
}

#[durable]
async fn publisher(ctx: &Ctx, dir: String) -> Result<u32, String> {
    let text = |e: Error| e.to_string();
    support::ledger_in(&dir, "BODY");
    // Not checkpointed by a step: a replay that wrote again would store
    // the pid of the process that replays.
    ctx.set_event("publisher", &std::process::id())
        .await
        .map_err(text)?;
    ctx.write_stream("log", &std::process::id())
        .await
        .map_err(text)?;
    let n = step!("hold", hold(&dir).await)?;
    ctx.write_stream("log", &std::process::id())
        .await
        .map_err(text)?;
    ctx.set_event("status", &"done".to_string())
        .await
        .map_err(text)?;
    Ok(n)
}

/// Runs in the child process only: a worker that starts `publisher`.
#[tokio::test]
async fn pg_publish_child() {
    let (Ok(schema), Ok(dir)) = (std::env::var(CHILD_ENV), std::env::var(DIR_ENV)) else {
        return;
    };
    let worker = builder_on(&schema, true)
        .register(publisher)
        .open()
        .await
        .unwrap();
    let _ = worker.run(publisher, "pub-1", dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_publishes_nothing_again_when_taken_over() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(schema) = Schema::new("durable_pub").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = support::test_process("pg_publish_child")
        .env(CHILD_ENV, &schema.name)
        .env(DIR_ENV, dir.path())
        .spawn()
        .unwrap();
    let child_pid = child.id();
    support::wait_until("the child's step is in flight", async || {
        let ledger = support::read_ledger(dir.path());
        if ledger.iter().any(|l| l == "BEGIN hold") {
            Ok(())
        } else {
            Err(ledger)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    // Another worker takes the instance over once the child's lease ran
    // out; a pure client waits for the end it publishes.
    let worker = schema
        .builder_with(true)
        .register(publisher)
        .open()
        .await
        .unwrap();
    let client = schema.builder_with(true).open().await.unwrap();
    let status = client
        .get_event_timeout::<String>("pub-1", "status", support::hang_guard())
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("done"));
    let publisher_pid = client.get_event::<u32>("pub-1", "publisher").await.unwrap();
    assert_eq!(
        publisher_pid,
        Some(child_pid),
        "the replay published again (this process is {})",
        std::process::id()
    );
    let log = client.read_stream::<u32>("pub-1", "log", 0).await.unwrap();
    assert_eq!(log, (vec![child_pid, std::process::id()], 2));
    let ledger = support::read_ledger(dir.path());
    let count = |line: &str| ledger.iter().filter(|l| *l == line).count();
    assert_eq!(count("BODY"), 2, "one run per worker: {ledger:?}");
    assert_eq!(count("BEGIN hold"), 2, "{ledger:?}");
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

#[durable]
async fn staged(ctx: &Ctx, _n: u32) -> Result<u64, String> {
    let text = |e: Error| e.to_string();
    ctx.set_event("stage", &"one".to_string())
        .await
        .map_err(text)?;
    ctx.write_stream("stages", &1u32).await.map_err(text)?;
    step!("middle", Ok::<_, String>(()))?;
    ctx.set_event("stage", &"two".to_string())
        .await
        .map_err(text)?;
    ctx.write_stream("stages", &2u32).await.map_err(text)?;
    Ok(7)
}

/// On PostgreSQL too, a fork starts with the state and stream entries its
/// checkpoints before the fork point published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_starts_with_what_was_published_before_its_step() {
    let Some(schema) = Schema::new("durable_pub").await else {
        return;
    };
    let worker = schema
        .builder_with(true)
        .register(staged)
        .open()
        .await
        .unwrap();
    let client = schema.builder_with(true).open().await.unwrap();
    let out = support::guarded("the original completes", worker.run(staged, "orig", 0)).await;
    assert_eq!(out.unwrap(), Ok(7));
    client.fork("orig", "middle", "copy").await.unwrap();
    // Before the fork's own run gets past its fork point, or after: the
    // state published before it is there from the start.
    let stages = client
        .read_stream::<u32>("copy", "stages", 0)
        .await
        .unwrap();
    assert_eq!(stages.0.first(), Some(&1));
    let copy = worker.attach(staged, "copy").await.unwrap();
    let out = support::guarded("the fork completes", copy.result()).await;
    assert_eq!(out.unwrap(), Ok(7));
    let stage = client.get_event::<String>("copy", "stage").await.unwrap();
    assert_eq!(stage.as_deref(), Some("two"));
    let stages = client
        .read_stream::<u32>("copy", "stages", 0)
        .await
        .unwrap();
    assert_eq!(stages.0, vec![1, 2]);
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}
