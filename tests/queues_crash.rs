//! Queues across a SIGKILL of a real process (embedded store): a kill
//! while a limited queue's instances run loses nothing and breaks no
//! limit after the restart, and a workflow killed after it enqueued
//! (`Ctx::enqueue`) replays without enqueueing again.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use durable::prelude::*;
use durable::{EnqueueOptions, ListFilter, Queue};

/// In flight in this process per ledger directory (one per test), and
/// the most ever seen.
static IN_FLIGHT: Mutex<Option<HashMap<String, (usize, usize)>>> = Mutex::new(None);

fn enter(dir: &str) {
    let mut map = IN_FLIGHT.lock().unwrap();
    let e = map
        .get_or_insert_default()
        .entry(dir.to_string())
        .or_default();
    e.0 += 1;
    e.1 = e.1.max(e.0);
}

fn leave(dir: &str) {
    let mut map = IN_FLIGHT.lock().unwrap();
    map.get_or_insert_default()
        .entry(dir.to_string())
        .or_default()
        .0 -= 1;
}

fn max_seen(dir: &Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    IN_FLIGHT
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&dir).map(|e| e.1))
        .unwrap_or(0)
}

const DIR_ENV: &str = "DURABLE_QUEUES_DIR";
const KILLED: u64 = 12;

/// Records each start in the ledger; blocks in the child until it dies.
#[durable(name = "ledger_job")]
async fn ledger_job(ctx: &Ctx, dir: String) -> Result<(), String> {
    let id = ctx.id().to_string();
    step!(
        "work",
        async {
            support::ledger_in(&dir, &format!("start {id}"));
            enter(&dir);
            if std::env::var_os(DIR_ENV).is_some() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            leave(&dir);
            Ok::<_, String>(())
        }
        .await
    )?;
    step!(
        "after",
        async {
            support::ledger_in(&dir, &format!("after {id}"));
            Ok::<_, String>(())
        }
        .await
    )
}

fn ledger_queue() -> Queue {
    Queue::new("killed").concurrency(2)
}

/// The child: enqueues every instance, then waits to be killed.
#[tokio::test]
async fn queues_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let engine = Engine::builder()
        .path(dir.join("store"))
        .register(ledger_job)
        .queue(ledger_queue())
        .open()
        .await
        .unwrap();
    let arg = dir.to_string_lossy().into_owned();
    let items = (0..KILLED).map(|n| (format!("k-{n}"), arg.clone()));
    engine
        .enqueue_many("killed", ledger_job, items)
        .await
        .unwrap();
    std::fs::write(dir.join("enqueued"), b"").unwrap();
    std::future::pending::<()>().await;
}

/// A SIGKILL while two instances of a limited queue run: after the
/// restart every instance finishes, the limit still holds, and no
/// instance runs a step past its checkpoint twice.
#[tokio::test]
async fn a_kill_in_the_middle_loses_nothing_and_keeps_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = support::test_process("queues_child")
        .env(DIR_ENV, dir.path())
        .spawn()
        .unwrap();
    support::wait_until("two instances run in the child", async || {
        let starts = support::read_ledger(dir.path()).len();
        if starts >= 2 && dir.path().join("enqueued").exists() {
            Ok(())
        } else if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended first: {status}");
        } else {
            Err(starts)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    // Only the limit's worth started before the kill.
    assert_eq!(support::read_ledger(dir.path()).len(), 2);

    let engine = Engine::builder()
        .path(dir.path().join("store"))
        .register(ledger_job)
        .queue(ledger_queue())
        .open()
        .await
        .unwrap();
    for n in 0..KILLED {
        let handle = engine.attach(ledger_job, format!("k-{n}")).await.unwrap();
        support::guarded("a queued instance completes", handle.result())
            .await
            .unwrap()
            .unwrap();
    }
    let max = max_seen(dir.path());
    assert!((1..=2).contains(&max), "{max} in flight");
    let ledger = support::read_ledger(dir.path());
    for n in 0..KILLED {
        let id = format!("k-{n}");
        let after = ledger
            .iter()
            .filter(|l| **l == format!("after {id}"))
            .count();
        assert_eq!(after, 1, "{id}: {ledger:?}");
        let starts = ledger
            .iter()
            .filter(|l| **l == format!("start {id}"))
            .count();
        assert!((1..=2).contains(&starts), "{id} started {starts} times");
    }
    let twice = ledger.iter().filter(|l| l.starts_with("start")).count() as u64 - KILLED;
    assert!(twice <= 2, "{twice} instances ran their first step again");
    engine.shutdown().await;
}

/// Enqueues three `ledger_job`s from a workflow, then (in the child) hangs.
#[durable(name = "fanout")]
async fn fanout(ctx: &Ctx, dir: String) -> Result<u32, String> {
    let id = ctx.id().to_string();
    for i in 0..3 {
        ctx.enqueue(
            "fan",
            ledger_job,
            format!("{id}-{i}"),
            dir.clone(),
            EnqueueOptions::new().priority(i),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    step!(
        "hang",
        async {
            support::ledger_in(&dir, &format!("hang {id}"));
            if std::env::var_os(DIR_ENV).is_some() {
                std::future::pending::<()>().await;
            }
            Ok::<_, String>(3u32)
        }
        .await
    )
}

fn fan_engine(dir: &Path) -> durable::EngineBuilder {
    Engine::builder()
        .path(dir.join("store"))
        .register(fanout)
        .register(ledger_job)
        .queue(Queue::new("fan"))
}

/// The child: runs `fanout` until killed.
#[tokio::test]
async fn fanout_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let engine = fan_engine(&dir).open().await.unwrap();
    let arg = dir.to_string_lossy().into_owned();
    let _ = engine.start(fanout, "fan", arg).await.unwrap();
    std::future::pending::<()>().await;
}

/// `Ctx::enqueue` is checkpointed: a workflow killed after enqueueing
/// replays its enqueues without enqueueing again, and everything it
/// enqueued runs to its end once.
#[tokio::test]
async fn a_workflow_enqueues_replay_safely_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = support::test_process("fanout_child")
        .env(DIR_ENV, dir.path())
        .spawn()
        .unwrap();
    support::wait_until("the workflow enqueued and hangs", async || {
        let ledger = support::read_ledger(dir.path());
        let started = ledger
            .iter()
            .filter(|l| l.starts_with("start fan-"))
            .count();
        if ledger.iter().any(|l| l == "hang fan") && started == 3 {
            Ok(())
        } else if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended first: {status}");
        } else {
            Err(ledger)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let engine = fan_engine(dir.path()).open().await.unwrap();
    let parent = engine.attach(fanout, "fan").await.unwrap();
    let out = support::guarded("the workflow completes", parent.result()).await;
    assert_eq!(out.unwrap(), Ok(3));
    for i in 0..3 {
        let h = engine.attach(ledger_job, format!("fan-{i}")).await.unwrap();
        support::guarded("an enqueued instance completes", h.result())
            .await
            .unwrap()
            .unwrap();
    }
    let history = engine.history("fan").await.unwrap();
    let enqueues = history
        .steps
        .iter()
        .filter(|s| s.name == "durable::enqueue")
        .count();
    assert_eq!(enqueues, 3);
    let listed = engine
        .list(&ListFilter::new().queue("fan"))
        .await
        .unwrap()
        .instances;
    assert_eq!(listed.len(), 3);
    let ledger = support::read_ledger(dir.path());
    for i in 0..3 {
        let after = ledger
            .iter()
            .filter(|l| **l == format!("after fan-{i}"))
            .count();
        assert_eq!(after, 1, "fan-{i}");
    }
    engine.shutdown().await;
}
