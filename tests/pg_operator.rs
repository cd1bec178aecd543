//! Operator actions on PostgreSQL from a pure client (an engine that
//! registers no workflow), run by a worker engine on the same schema: retry
//! of a failed instance and resume of a cancelled one, pause and unpause of
//! a waiting one, fork of a completed one, and purge. The listener is off:
//! polling alone delivers.
//!
//! `cargo test --features postgres --test pg_operator`. Needs PostgreSQL
//! (`DURABLE_TEST_PG`); without it the tests pass after saying "skipped: no
//! PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use durable::Status;
use durable::prelude::*;

use support::pg::Schema;

/// The ids with rows in `table` (its instance column named `column`).
async fn ids_in(schema: &Schema, table: &str, column: &str) -> Vec<String> {
    schema
        .client
        .query(
            &format!(
                "SELECT DISTINCT {column} FROM {}.{table} ORDER BY 1",
                schema.name
            ),
            &[],
        )
        .await
        .expect("read a table")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn status_is(engine: &Engine, id: &str, want: fn(&Status) -> bool) {
    support::wait_until("the status", async || match engine.status(id).await {
        Ok(status) if want(&status) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
}

// ------------------------------------------------------------ retry, resume

static DECLINE: AtomicBool = AtomicBool::new(true);
static PREPARED: AtomicU32 = AtomicU32::new(0);
static CHARGED: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn charge(_ctx: &Ctx, amount: u32) -> Result<u32, String> {
    let base = step!(
        "prepare",
        async {
            PREPARED.fetch_add(1, Ordering::SeqCst);
            Ok::<u32, String>(100)
        }
        .await
    )?;
    step!(
        "charge",
        retry = RetryPolicy::no_retry(),
        async {
            CHARGED.fetch_add(1, Ordering::SeqCst);
            if DECLINE.load(Ordering::SeqCst) {
                return Err("declined".to_string());
            }
            Ok::<u32, String>(base + amount)
        }
        .await
    )
}

#[durable]
async fn approval(_ctx: &Ctx, base: u32) -> Result<u32, String> {
    let go: u32 = wait_for!("go");
    Ok(base + go)
}

/// A pure client retries a failed instance; the worker runs it to
/// completion, the steps before the failed one replayed. A cancelled one
/// is resumed (reopened) and runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pure_client_retries_a_failed_instance_the_worker_runs() {
    let Some(schema) = Schema::new("durable_op").await else {
        return;
    };
    let worker = schema
        .builder()
        .register(charge)
        .register(approval)
        .open()
        .await
        .unwrap();
    let client = schema.builder().open().await.unwrap();
    let first = client.start(charge, "order-1", 5).await.unwrap();
    let out = support::guarded("the first run", first.result()).await;
    assert_eq!(out.unwrap(), Err("declined".to_string()));
    assert_eq!(PREPARED.load(Ordering::SeqCst), 1);
    assert_eq!(CHARGED.load(Ordering::SeqCst), 1);

    DECLINE.store(false, Ordering::SeqCst);
    client.retry("order-1").await.unwrap();
    // Twice is once.
    client.retry("order-1").await.unwrap();
    // A pure client cannot attach (it has no type for the output): the
    // worker's handle.
    let handle = worker.attach(charge, "order-1").await.unwrap();
    let out = support::guarded("the retried run", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(105));
    assert_eq!(PREPARED.load(Ordering::SeqCst), 1, "prepare replayed");
    assert_eq!(CHARGED.load(Ordering::SeqCst), 2, "charge ran again once");
    let history = client.history("order-1").await.unwrap();
    assert!(
        history
            .transitions
            .iter()
            .any(|t| matches!(t.kind, durable::TransitionKind::Retried { .. })),
        "{history:?}"
    );

    // Cancelled while it waits, then resumed: it runs on to its end.
    let _ = client.start(approval, "appr-1", 1).await.unwrap();
    status_is(&client, "appr-1", |s| matches!(s, Status::Waiting { .. })).await;
    client.cancel("appr-1").await.unwrap();
    status_is(&client, "appr-1", |s| matches!(s, Status::Cancelled)).await;
    // Resuming needs the workflow's type: the worker reopens it.
    let resumed = worker.resume(approval, "appr-1").await.unwrap();
    status_is(&client, "appr-1", |s| matches!(s, Status::Waiting { .. })).await;
    client.send_event("appr-1", "go", 41u32).await.unwrap();
    let out = support::guarded("the resumed run", resumed.result()).await;
    assert_eq!(out.unwrap(), Ok(42));
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

// ------------------------------------------------------------ pause

static BEFORE: AtomicU32 = AtomicU32::new(0);
static AFTER: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn gated(_ctx: &Ctx, base: u32) -> Result<u32, String> {
    let one = step!(
        "before",
        async {
            BEFORE.fetch_add(1, Ordering::SeqCst);
            Ok::<u32, String>(base)
        }
        .await
    )?;
    let go: u32 = wait_for!("go");
    step!(
        "after",
        async {
            AFTER.fetch_add(1, Ordering::SeqCst);
            Ok::<u32, String>(one + go)
        }
        .await
    )
}

#[durable]
async fn canary(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    Ok(n)
}

/// A pure client pauses a waiting instance; its event arrives; the worker
/// runs nothing of it (a later instance is claimed and run meanwhile, so a
/// claim round passed it over) until the client unpauses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_runs_nothing_until_unpaused() {
    let Some(schema) = Schema::new("durable_op").await else {
        return;
    };
    let worker = schema
        .builder()
        .register(gated)
        .register(canary)
        .open()
        .await
        .unwrap();
    let client = schema.builder().open().await.unwrap();
    let handle = client.start(gated, "p-1", 1).await.unwrap();
    status_is(&client, "p-1", |s| matches!(s, Status::Waiting { .. })).await;
    client.pause("p-1").await.unwrap();
    assert!(matches!(
        client.status("p-1").await.unwrap(),
        Status::Paused { .. }
    ));
    client.send_event("p-1", "go", 10u32).await.unwrap();
    // Started after the event was stored: the round that claims it would
    // have claimed the woken instance too, were it not paused.
    let later = client.start(canary, "canary", 7).await.unwrap();
    let out = support::guarded("the later instance", later.result()).await;
    assert_eq!(out.unwrap(), Ok(7));
    assert_eq!(AFTER.load(Ordering::SeqCst), 0);
    assert!(matches!(
        client.status("p-1").await.unwrap(),
        Status::Paused { .. }
    ));

    client.unpause("p-1").await.unwrap();
    let out = support::guarded("the unpaused run", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(11));
    assert_eq!(BEFORE.load(Ordering::SeqCst), 1);
    assert_eq!(AFTER.load(Ordering::SeqCst), 1);
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

// ------------------------------------------------------------ fork

static RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[durable]
async fn pipeline(ctx: &Ctx, base: u32) -> Result<u32, String> {
    let id = ctx.id().to_string();
    let a = step!(
        "load",
        async {
            RUNS.lock().unwrap().push(format!("{id} load"));
            Ok::<u32, String>(base)
        }
        .await
    )?;
    let b = step!(
        "transform",
        async {
            RUNS.lock().unwrap().push(format!("{id} transform"));
            Ok::<u32, String>(a * 10)
        }
        .await
    )?;
    step!(
        "save",
        async {
            RUNS.lock().unwrap().push(format!("{id} save"));
            Ok::<u32, String>(b + 1)
        }
        .await
    )
}

fn runs_of(id: &str) -> Vec<String> {
    RUNS.lock()
        .unwrap()
        .iter()
        .filter(|r| r.split(' ').next() == Some(id))
        .cloned()
        .collect()
}

/// A pure client forks a completed instance from a step; the worker runs
/// the fork: the steps before the fork point replay, the rest run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_by_a_pure_client_is_run_by_the_worker() {
    let Some(schema) = Schema::new("durable_op").await else {
        return;
    };
    let worker = schema.builder().register(pipeline).open().await.unwrap();
    let client = schema.builder().open().await.unwrap();
    assert_eq!(worker.run(pipeline, "f-1", 4).await.unwrap(), Ok(41));
    client.fork("f-1", "transform", "f-2").await.unwrap();
    // Twice is once.
    client.fork("f-1", "transform", "f-2").await.unwrap();
    let handle = worker.attach(pipeline, "f-2").await.unwrap();
    let out = support::guarded("the fork", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(41));
    assert_eq!(runs_of("f-1"), ["f-1 load", "f-1 transform", "f-1 save"]);
    assert_eq!(runs_of("f-2"), ["f-2 transform", "f-2 save"]);
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

// ------------------------------------------------------------ purge

#[durable]
async fn short(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    step!("double", async { Ok::<u32, String>(n * 2) }.await)
}

/// A pure client purges the finished instances: their rows go from every
/// table; an unfinished one (with a stored event) is kept whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pure_client_purges_finished_instances() {
    let Some(schema) = Schema::new("durable_op").await else {
        return;
    };
    let worker = schema
        .builder()
        .register(short)
        .register(approval)
        .open()
        .await
        .unwrap();
    let client = schema.builder().open().await.unwrap();
    for (i, id) in ["done-1", "done-2", "done-3"].into_iter().enumerate() {
        assert_eq!(
            client.run(short, id, i as u32).await.unwrap(),
            Ok(2 * i as u32)
        );
    }
    let _ = client.start(approval, "open-1", 1).await.unwrap();
    status_is(&client, "open-1", |s| matches!(s, Status::Waiting { .. })).await;
    client.send_event("open-1", "later", 5u32).await.unwrap();

    let hour = Duration::from_secs(3_600);
    assert_eq!(client.purge(SystemTime::now() - hour).await.unwrap(), 0);
    assert_eq!(client.purge(SystemTime::now() + hour).await.unwrap(), 3);
    assert_eq!(client.purge(SystemTime::now() + hour).await.unwrap(), 0);
    assert_eq!(ids_in(&schema, "instances", "id").await, ["open-1"]);
    assert!(
        ids_in(&schema, "checkpoints", "instance_id")
            .await
            .iter()
            .all(|id| id == "open-1")
    );
    assert_eq!(ids_in(&schema, "events", "instance_id").await, ["open-1"]);
    assert!(matches!(
        client.status("done-1").await,
        Err(Error::Usage(UsageError::NotFound { .. }))
    ));
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}
