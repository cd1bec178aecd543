//! Engines that share a PostgreSQL schema and nothing else (each its own
//! worker row, connections and tasks), with the listener off so that
//! polling alone must deliver: an event sent by a pure client before the
//! instance reaches its wait, a cancel by a pure client of a parked
//! instance, and a handle in one engine that completes when another engine
//! finishes the instance; a pure client that starts instances the
//! workers run (with or without a worker up at the time); and an instance
//! owned by a live worker that none of its tasks runs, let go of.
//!
//! `cargo test --features postgres --test pg_cross`. Needs PostgreSQL
//! (`DURABLE_TEST_PG`); without it the tests pass after saying "skipped: no
//! PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use durable::Status;
use durable::prelude::*;

use support::pg::Schema;

/// While set, the first step of `gated` does not return.
static GATE: AtomicBool = AtomicBool::new(true);
static ENTERED: AtomicBool = AtomicBool::new(false);

async fn hold() -> Result<u64, String> {
    ENTERED.store(true, Ordering::SeqCst);
    while GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(1)
}

#[durable]
async fn gated(_ctx: &Ctx, base: u64) -> Result<u64, String> {
    let one = step!("hold", hold().await)?;
    let go: u64 = wait_for!("go");
    let after = step!("after", async { Ok::<_, String>(go + one) }.await)?;
    Ok(base + after)
}

/// An event a pure client stored before the instance reached its wait is
/// received at the wait (the wait's look-up of stored events goes over the
/// network; the instance must not park while it is pending, or it would
/// find the event first, run again and park again for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_before_the_wait_is_received() {
    let Some(schema) = Schema::new("durable_cross").await else {
        return;
    };
    let worker = schema.builder().register(gated).open().await.unwrap();
    let client = schema.builder().open().await.unwrap();
    let handle = worker.start(gated, "early", 100).await.unwrap();
    support::wait_until("the first step began", async || {
        if ENTERED.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    client.send_event("early", "go", 41u64).await.unwrap();
    GATE.store(false, Ordering::SeqCst);
    let out = support::guarded("the instance completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(142));
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

#[durable]
async fn waits(_ctx: &Ctx, base: u64) -> Result<u64, String> {
    let v = step!("first", async { Ok::<_, String>(base) }.await)?;
    let go: u64 = wait_for!("go");
    Ok(v + go)
}

/// A pure client's event wakes an instance parked by another engine, and
/// its cancel ends another one; polling alone delivers both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pure_client_sends_and_cancels_with_polling_alone() {
    let Some(schema) = Schema::new("durable_cross").await else {
        return;
    };
    let worker = schema.builder().register(waits).open().await.unwrap();
    let client = schema.builder().open().await.unwrap();
    let woken = worker.start(waits, "woken", 5).await.unwrap();
    let cancelled = worker.start(waits, "cancelled", 6).await.unwrap();
    for id in ["woken", "cancelled"] {
        support::wait_until("the instance waits", async || {
            match client.status(id).await {
                Ok(Status::Waiting { .. }) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    client.send_event("woken", "go", 10u64).await.unwrap();
    client.cancel("cancelled").await.unwrap();
    let out = support::guarded("the woken instance completes", woken.result()).await;
    assert_eq!(out.unwrap(), Ok(15));
    let out = support::guarded("the cancelled instance ends", cancelled.result()).await;
    assert!(
        matches!(out, Err(Error::Instance(InstanceError::Cancelled { .. }))),
        "{out:?}"
    );
    assert!(matches!(
        client.status("cancelled").await,
        Ok(Status::Cancelled)
    ));
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

/// A handle taken in one engine completes when another engine runs the
/// instance to its end: engine A starts it and shuts down while it waits;
/// engine B attaches (the instance is parked: B does not run it); engine C
/// runs it when the event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_completes_when_another_engine_finishes() {
    let Some(schema) = Schema::new("durable_cross").await else {
        return;
    };
    let starter = schema.builder().register(waits).open().await.unwrap();
    let _ = starter.start(waits, "far", 1).await.unwrap();
    let client = schema.builder().open().await.unwrap();
    support::wait_until("the instance waits", async || {
        match client.status("far").await {
            Ok(Status::Waiting { .. }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    starter.shutdown().await;
    let watcher = schema.builder().register(waits).open().await.unwrap();
    let handle = watcher.attach(waits, "far").await.unwrap();
    let runner = schema.builder().register(waits).open().await.unwrap();
    client.send_event("far", "go", 2u64).await.unwrap();
    let out = support::guarded("the handle completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(3));
    for engine in [watcher, runner, client] {
        engine.shutdown().await;
    }
    schema.drop_schema().await;
}

/// Runs only where registered: which engine ran it shows in its output.
static RAN_BY_WORKER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[durable]
async fn doubled(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let twice = step!("double", async { Ok::<_, String>(n * 2) }.await)?;
    RAN_BY_WORKER.fetch_add(1, Ordering::SeqCst);
    Ok(twice)
}

/// A process that registers no workflow starts instances (typed by the
/// workflow it names); the workers run them and the client's handle gets
/// the output. Started while no worker is up, an instance waits for the
/// first worker that opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pure_client_starts_instances_the_workers_run() {
    let Some(schema) = Schema::new("durable_cross").await else {
        return;
    };
    let client = schema.builder().open().await.unwrap();
    // No worker yet: recorded, and nobody runs it.
    let early = client.start(doubled, "early", 20).await.unwrap();
    assert!(matches!(
        client.status("early").await.unwrap(),
        Status::Running { .. }
    ));
    assert_eq!(RAN_BY_WORKER.load(Ordering::SeqCst), 0);

    let worker = schema.builder().register(doubled).open().await.unwrap();
    let out = support::guarded("the early instance completes", early.result()).await;
    assert_eq!(out.unwrap(), Ok(40));
    // The worker ran it as a new instance, not as one to recover: it
    // began, and counts no resume.
    let history = client.history("early").await.unwrap();
    assert!(
        history
            .transitions
            .iter()
            .all(|t| t.kind != durable::TransitionKind::Resumed),
        "{:?}",
        history.transitions
    );

    // With a worker up: started by the client, run by the worker.
    let handles = start_ten(&client).await;
    for (i, handle) in handles.into_iter().enumerate() {
        let out = support::guarded("a client's instance completes", handle.result()).await;
        assert_eq!(out.unwrap(), Ok(2 * i as u64));
    }
    assert_eq!(RAN_BY_WORKER.load(Ordering::SeqCst), 11);
    // Starting again attaches: the same output, nothing runs again.
    let again = client.run(doubled, "late-3", 3).await.unwrap();
    assert_eq!(again, Ok(6));
    assert_eq!(RAN_BY_WORKER.load(Ordering::SeqCst), 11);
    // A different input under the same id is refused, as anywhere.
    assert!(matches!(
        client.start(doubled, "late-3", 4).await,
        Err(Error::Usage(UsageError::IdConflict { .. }))
    ));
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

async fn start_ten(client: &Engine) -> Vec<durable::Handle<Result<u64, String>>> {
    let mut handles = Vec::new();
    for i in 0..10u64 {
        handles.push(client.start(doubled, format!("late-{i}"), i).await.unwrap());
    }
    handles
}

#[durable]
async fn twice(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!("double", async { Ok::<_, String>(n * 2) }.await)
}

/// `start_many` on PostgreSQL: one statement records every new instance;
/// a pure client's batch is run by the worker; ids that exist attach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_many_records_a_batch_the_workers_run() {
    let Some(schema) = Schema::new("durable_cross").await else {
        return;
    };
    let worker = schema.builder().register(twice).open().await.unwrap();
    let client = schema.builder().open().await.unwrap();
    let first = client.run(twice, "many-3", 3).await.unwrap();
    assert_eq!(first, Ok(6));
    let items = (0..300u64).map(|n| (format!("many-{n}"), n));
    let handles = client.start_many(twice, items).await.unwrap();
    for (n, handle) in handles.into_iter().enumerate() {
        let out = support::guarded("a batch instance completes", handle.result()).await;
        assert_eq!(out.unwrap(), Ok(2 * n as u64));
    }
    // The same batch from the worker attaches to every instance.
    let again = worker
        .start_many(twice, (0..300u64).map(|n| (format!("many-{n}"), n)))
        .await
        .unwrap();
    for (n, handle) in again.into_iter().enumerate() {
        assert_eq!(handle.result().await.unwrap(), Ok(2 * n as u64));
    }
    // A conflicting input is refused.
    assert!(matches!(
        client
            .start_many(twice, [("many-1".to_string(), 99u64)])
            .await,
        Err(Error::Usage(UsageError::IdConflict { .. }))
    ));
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

/// Runs of `strayed` (a counter of its own: tests run in parallel).
static STRAYED_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[durable]
async fn strayed(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let twice = step!("double", async { Ok::<_, String>(n * 2) }.await)?;
    STRAYED_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(twice)
}

/// An instance owned by a live worker that none of that worker's tasks
/// runs: what a claim or create leaves when its COMMIT took but the answer
/// was lost with the connection (the caller was told it failed). The
/// worker's lease stays current, so no takeover would ever come; the
/// worker lets go of it at its second sweep that finds it, and another
/// worker claims and runs it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_its_owner_does_not_run_is_let_go() {
    let Some(schema) = Schema::new("durable_cross").await else {
        return;
    };
    // A process that registers no workflow: it starts, and runs nothing.
    let owner = schema.builder().open().await.unwrap();
    let owner_id: i64 = schema
        .client
        .query_one(
            &format!(
                "SELECT max(id) FROM {}.workers WHERE state = 0",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let handle = owner.start(strayed, "stray", 21).await.unwrap();
    // The state a lost answer leaves: owned, under a new epoch, by a
    // worker that is alive and drives no task of it.
    let owned = schema
        .client
        .execute(
            &format!(
                "UPDATE {}.instances SET owner = $1, epoch = epoch + 1
                 WHERE id = 'stray' AND owner IS NULL",
                schema.name
            ),
            &[&owner_id],
        )
        .await
        .unwrap();
    assert_eq!(owned, 1);
    let worker = schema.builder().register(strayed).open().await.unwrap();
    let out = support::guarded("the stray instance completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(42));
    assert_eq!(STRAYED_RUNS.load(Ordering::SeqCst), 1);
    worker.shutdown().await;
    owner.shutdown().await;
    schema.drop_schema().await;
}
