//! Queues with flow control on the embedded store: guards that a queue's
//! concurrency limit (global, per partition, per worker) is never
//! exceeded, that priority decides the order, that a deduplication id is
//! refused while its instance is pending and accepted after it finished,
//! that delayed starts and the rate limit follow the engine's clock, and
//! that queued instances show in listings. `queues_crash.rs` kills a
//! process in the middle.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use durable::prelude::*;
use durable::time::ManualClock;
use durable::{EnqueueOptions, ListFilter, Queue, Status, StatusKind};

/// In flight per tag (a test's queue), and the most ever seen.
static IN_FLIGHT: Mutex<Option<HashMap<String, (usize, usize)>>> = Mutex::new(None);
/// The order bodies started in, by tag.
static ORDER: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Held bodies wait until this is set.
static RELEASE: AtomicBool = AtomicBool::new(false);
static RAN: AtomicUsize = AtomicUsize::new(0);

fn enter(tag: &str) {
    let mut map = IN_FLIGHT.lock().unwrap();
    let e = map
        .get_or_insert_default()
        .entry(tag.to_string())
        .or_default();
    e.0 += 1;
    e.1 = e.1.max(e.0);
}

fn leave(tag: &str) {
    let mut map = IN_FLIGHT.lock().unwrap();
    map.get_or_insert_default()
        .entry(tag.to_string())
        .or_default()
        .0 -= 1;
}

fn max_seen(tag: &str) -> usize {
    IN_FLIGHT
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(tag).map(|e| e.1))
        .unwrap_or(0)
}

/// A job: (tag for the in-flight count, whether to wait for RELEASE).
#[durable]
async fn job(ctx: &Ctx, job: (String, bool)) -> Result<String, String> {
    let id = ctx.id().to_string();
    let (tag, hold) = job;
    step!(
        "work",
        async {
            enter(&tag);
            ORDER.lock().unwrap().push(id.clone());
            RAN.fetch_add(1, Ordering::SeqCst);
            // Long enough for others to start if a limit let them.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while hold && !RELEASE.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            leave(&tag);
            Ok::<_, String>(id.clone())
        }
        .await
    )
}

async fn open(dir: &Path, queues: Vec<Queue>) -> Engine {
    let mut builder = Engine::builder().path(dir).register(job);
    for q in queues {
        builder = builder.queue(q);
    }
    builder.open().await.unwrap()
}

async fn finish_all(handles: Vec<durable::Handle<Result<String, String>>>) {
    for h in handles {
        support::guarded("a queued instance completes", h.result())
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn the_concurrency_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), vec![Queue::new("limited").concurrency(3)]).await;
    let items = (0..15).map(|n| (format!("c-{n}"), ("limited".to_string(), false)));
    let handles = engine.enqueue_many("limited", job, items).await.unwrap();
    assert_eq!(handles.len(), 15);
    finish_all(handles).await;
    let max = max_seen("limited");
    assert!(
        (1..=3).contains(&max),
        "max in flight {max} over the limit 3"
    );
    let info = engine.queues().await.unwrap();
    assert_eq!((info[0].pending, info[0].running), (0, 0));
    engine.shutdown().await;
}

#[tokio::test]
async fn the_per_worker_limit_holds_in_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), vec![Queue::new("local").per_worker(2)]).await;
    let items = (0..10).map(|n| (format!("w-{n}"), ("local".to_string(), false)));
    let handles = engine.enqueue_many("local", job, items).await.unwrap();
    finish_all(handles).await;
    let max = max_seen("local");
    assert!(
        (1..=2).contains(&max),
        "max in flight {max} over the limit 2"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn the_partition_limit_holds_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(
        dir.path(),
        vec![Queue::new("tenants").partition_concurrency(1)],
    )
    .await;
    let mut handles = Vec::new();
    for n in 0..12 {
        let tenant = format!("tenant-{}", n % 3);
        let options = EnqueueOptions::new().partition(tenant.clone());
        handles.push(
            engine
                .enqueue_with("tenants", job, format!("t-{n}"), (tenant, false), options)
                .await
                .unwrap(),
        );
    }
    finish_all(handles).await;
    for t in 0..3 {
        let max = max_seen(&format!("tenant-{t}"));
        assert_eq!(max, 1, "tenant-{t} had {max} in flight");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn priority_decides_the_order_with_a_limit_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), vec![Queue::new("ordered").concurrency(1)]).await;
    // A delayed instance holds nothing: first one that runs is the gate.
    let gate = engine
        .enqueue("ordered", job, "gate", ("ordered".to_string(), true))
        .await
        .unwrap();
    support::wait_until("the gate runs", async || {
        if ORDER.lock().unwrap().iter().any(|id| id == "gate") {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    let mut handles = Vec::new();
    for (id, priority) in [("p5", 5), ("p1a", 1), ("p3", 3), ("p1b", 1), ("p-2", -2)] {
        let options = EnqueueOptions::new().priority(priority);
        handles.push(
            engine
                .enqueue_with("ordered", job, id, ("ordered".to_string(), true), options)
                .await
                .unwrap(),
        );
    }
    RELEASE.store(true, Ordering::SeqCst);
    gate.result().await.unwrap().unwrap();
    finish_all(handles).await;
    let order: Vec<String> = ORDER
        .lock()
        .unwrap()
        .iter()
        .filter(|id| ["gate", "p5", "p1a", "p3", "p1b", "p-2"].contains(&id.as_str()))
        .cloned()
        .collect();
    assert_eq!(order, ["gate", "p-2", "p1a", "p1b", "p3", "p5"]);
    assert_eq!(max_seen("ordered"), 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_dedup_id_is_refused_while_pending_and_accepted_after() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::now());
    let engine = Engine::builder()
        .path(dir.path())
        .register(job)
        .queue(Queue::new("dedup"))
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    // Delayed, so it stays pending until the clock moves.
    let first = engine
        .enqueue_with(
            "dedup",
            job,
            "d-1",
            ("dedup".to_string(), false),
            EnqueueOptions::new()
                .dedup("order-9")
                .delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(
        engine.status("d-1").await.unwrap(),
        Status::Queued {
            queue: "dedup".into()
        }
    );
    let err = engine
        .enqueue_with(
            "dedup",
            job,
            "d-2",
            ("dedup".to_string(), false),
            EnqueueOptions::new().dedup("order-9"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Usage(UsageError::Duplicate { existing, .. }) if existing == "d-1"),
        "{err:?}"
    );
    assert!(matches!(
        engine.status("d-2").await,
        Err(Error::Usage(UsageError::NotFound { .. }))
    ));
    // Listed as queued, filtered by queue.
    let page = engine
        .list(&ListFilter::new().queue("dedup").status(StatusKind::Queued))
        .await
        .unwrap();
    assert_eq!(page.instances.len(), 1);
    assert_eq!(page.instances[0].queue.as_deref(), Some("dedup"));
    // Not before its time.
    clock.advance(Duration::from_secs(61));
    support::guarded("d-1 completes", first.result())
        .await
        .unwrap()
        .unwrap();
    let second = engine
        .enqueue_with(
            "dedup",
            job,
            "d-2",
            ("dedup".to_string(), false),
            EnqueueOptions::new().dedup("order-9"),
        )
        .await
        .unwrap();
    support::guarded("d-2 completes", second.result())
        .await
        .unwrap()
        .unwrap();
    engine.shutdown().await;
}

#[tokio::test]
async fn the_rate_limit_allows_n_per_period_on_the_engines_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::now());
    let engine = Engine::builder()
        .path(dir.path())
        .register(job)
        .queue(Queue::new("rated").rate_limit(2, Duration::from_secs(3600)))
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    let items = (0..5).map(|n| (format!("r-{n}"), ("rated".to_string(), false)));
    let handles = engine.enqueue_many("rated", job, items).await.unwrap();
    let done = async |engine: &Engine| {
        let mut n = 0;
        for i in 0..5 {
            if engine
                .status(&format!("r-{i}"))
                .await
                .unwrap()
                .is_finished()
            {
                n += 1;
            }
        }
        n
    };
    for (advance, expected) in [(0, 2), (3600, 4), (3600, 5)] {
        clock.advance(Duration::from_secs(advance));
        support::wait_until("the allowed dispatches finish", async || {
            let n = done(&engine).await;
            if n >= expected { Ok(n) } else { Err(n) }
        })
        .await;
        // A dispatch round after they finished still takes no more.
        let info = engine.queues().await.unwrap();
        assert_eq!(info[0].running, 0);
        let _ = engine
            .enqueue("rated", job, "r-0", ("rated".to_string(), false))
            .await
            .unwrap();
        assert_eq!(done(&engine).await, expected, "more than 2 per period");
        assert_eq!(info[0].pending, 5 - expected as u64);
    }
    finish_all(handles).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn queues_are_checked_at_open_and_at_enqueue() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        vec![Queue::new("")],
        vec![Queue::new("a"), Queue::new("a")],
        vec![Queue::new("z").concurrency(0)],
        vec![Queue::new("r").rate_limit(1, Duration::ZERO)],
    ] {
        let mut builder = Engine::builder().path(dir.path()).register(job);
        for q in bad {
            builder = builder.queue(q);
        }
        let err = builder.open().await.unwrap_err();
        assert!(
            matches!(err, Error::Usage(UsageError::InvalidQueue { .. })),
            "{err:?}"
        );
    }
    let engine = open(dir.path(), vec![Queue::new("known")]).await;
    let err = engine
        .enqueue("unknown", job, "u-1", ("u".to_string(), false))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Usage(UsageError::UnknownQueue { .. })),
        "{err:?}"
    );
    engine.shutdown().await;
}
