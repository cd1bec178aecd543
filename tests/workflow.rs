//! Guards the core semantics of `#[durable]` workflows on a real sled store:
//! steps run once and replay after a restart, loops number occurrences,
//! `join!` runs steps concurrently, ids are idempotency keys, retries follow
//! the policy and survive restarts, and history tells what happened.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use durable::prelude::*;
use durable::{Status, StepOutcome, TransitionKind};
use serde::{Deserialize, Serialize};

/// Every step body that ran, as "instance/step/detail".
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn log(entry: String) {
    LOG.lock().unwrap().push(entry);
}

fn ran(prefix: &str) -> usize {
    LOG.lock()
        .unwrap()
        .iter()
        .filter(|e| e.starts_with(prefix))
        .count()
}

/// Failures still to inject, by "instance/step".
static FAIL: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn fail_next(key: &str, times: u32) {
    FAIL.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(key.to_string(), times);
}

fn should_fail(key: &str) -> bool {
    let mut fail = FAIL.lock().unwrap();
    match fail.get_or_insert_with(HashMap::new).get_mut(key) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

async fn effect(ctx: &Ctx, step: &str, value: u64) -> Result<u64, String> {
    let key = format!("{}/{step}", ctx.id());
    log(format!("{key}/{value}"));
    if should_fail(&key) {
        return Err(format!("{step} failed"));
    }
    Ok(value)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    items: Vec<u64>,
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(3)
        .initial_delay(Duration::from_millis(1))
}

#[durable(retry = fast_retry())]
async fn order(ctx: &Ctx, order: Order) -> Result<u64, String> {
    let reserved = step!(
        "reserve",
        effect(ctx, "reserve", order.items.len() as u64).await
    )?;
    let mut total = 0;
    for item in &order.items {
        total += step!("price", effect(ctx, "price", *item).await)?;
    }
    let (tax, fee) = tokio::join!(
        step!("tax", effect(ctx, "tax", total / 10).await),
        step!("fee", effect(ctx, "fee", 1).await)
    );
    let (tax, fee) = (tax?, fee?);
    let charged = step!("charge", effect(ctx, "charge", total + tax + fee).await)?;
    Ok(charged * 100 + reserved)
}

async fn open(path: &Path) -> Engine {
    Engine::builder()
        .path(path)
        .register(order)
        .register(flaky)
        .register(panics)
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn steps_run_once_and_replay_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let input = Order {
        items: vec![10, 20, 30],
    };
    assert_eq!(
        engine.run(order, "replay-1", input.clone()).await.unwrap(),
        Ok(67_03)
    );
    assert_eq!(ran("replay-1/"), 7);
    assert_eq!(ran("replay-1/price/"), 3);
    engine.shutdown().await;

    let engine = open(dir.path()).await;
    // Attaching to the finished instance returns its stored output, runs nothing.
    assert_eq!(
        engine.run(order, "replay-1", input).await.unwrap(),
        Ok(67_03)
    );
    assert_eq!(ran("replay-1/"), 7);
    let history = engine.history("replay-1").await.unwrap();
    assert!(matches!(history.status, Status::Completed { .. }));
    let names: Vec<(String, u32)> = history
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.occurrence))
        .collect();
    for expected in [
        ("reserve", 0),
        ("price", 0),
        ("price", 1),
        ("price", 2),
        ("tax", 0),
        ("fee", 0),
        ("charge", 0),
    ] {
        assert!(
            names.contains(&(expected.0.to_string(), expected.1)),
            "{expected:?} missing from {names:?}"
        );
    }
    assert!(
        history
            .steps
            .iter()
            .all(|s| s.attempts == 1 && s.finished_at.is_some())
    );
    assert!(
        matches!(&history.steps[0].outcome, StepOutcome::Value { type_name, size } if type_name.contains("u64") && *size > 0)
    );
    assert_eq!(
        history.transitions.first().map(|t| &t.kind),
        Some(&TransitionKind::Started)
    );
    assert_eq!(
        history.transitions.last().map(|t| &t.kind),
        Some(&TransitionKind::Completed)
    );
}

#[tokio::test]
async fn ids_are_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let input = Order { items: vec![1] };
    // Concurrent starts of one id run it once.
    let starts = (0..8).map(|_| {
        let engine = engine.clone();
        let input = input.clone();
        tokio::spawn(async move { engine.run(order, "idem-1", input).await })
    });
    for start in starts {
        assert_eq!(start.await.unwrap().unwrap(), Ok(2_01));
    }
    assert_eq!(ran("idem-1/reserve"), 1);

    let conflict = engine.run(order, "idem-1", Order { items: vec![2] }).await;
    assert!(
        matches!(&conflict, Err(Error::Usage(UsageError::IdConflict { id, existing })) if id == "idem-1" && existing == "a different input"),
        "{conflict:?}"
    );
    let conflict = engine.run(flaky, "idem-1", 3).await;
    assert!(
        matches!(&conflict, Err(Error::Usage(UsageError::IdConflict { existing, .. })) if existing.contains("order")),
        "{conflict:?}"
    );
    let id = String::from("idem-2");
    assert_eq!(
        engine.run(order, &id, input.clone()).await.unwrap(),
        Ok(2_01)
    );
    assert_eq!(
        engine
            .run(order, format!("idem-{}", 3), input)
            .await
            .unwrap(),
        Ok(2_01)
    );
}

#[tokio::test]
async fn two_hundred_concurrent_instances() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let mut handles = Vec::new();
    for i in 0..200u64 {
        handles.push(
            engine
                .start(order, format!("many-{i}"), Order { items: vec![i, 1] })
                .await
                .unwrap(),
        );
    }
    for (i, handle) in handles.into_iter().enumerate() {
        let i = i as u64;
        let total = i + 1;
        assert_eq!(
            handle.result().await.unwrap(),
            Ok((total + total / 10 + 1) * 100 + 2)
        );
    }
    assert_eq!(ran("many-"), 200 * 6);
}

#[durable]
async fn flaky(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let first = step!("first", retry = fast_retry(), effect(ctx, "first", n).await)?;
    let second = step!(
        "second",
        retry = RetryPolicy::no_retry(),
        effect(ctx, "second", first).await.map_err(permanent)
    );
    match second {
        Ok(v) => Ok(v),
        Err(e) => Err(format!("gave up: {e}")),
    }
}

#[tokio::test]
async fn failed_attempts_are_retried_and_exhaustion_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    fail_next("retry-1/first", 2);
    assert_eq!(engine.run(flaky, "retry-1", 4).await.unwrap(), Ok(4));
    assert_eq!(ran("retry-1/first"), 3);
    let history = engine.history("retry-1").await.unwrap();
    assert_eq!(history.steps[0].attempts, 3);

    // A permanent error is not retried, and is the step's checkpointed outcome.
    fail_next("retry-2/second", 5);
    assert_eq!(
        engine.run(flaky, "retry-2", 4).await.unwrap(),
        Err("gave up: second failed".into())
    );
    assert_eq!(ran("retry-2/second"), 1);

    // Exhausted retries: the Err is checkpointed; a replay does not run the body.
    fail_next("retry-3/first", 10);
    assert_eq!(
        engine.run(flaky, "retry-3", 4).await.unwrap(),
        Err("first failed".into())
    );
    assert_eq!(ran("retry-3/first"), 3);
    let history = engine.history("retry-3").await.unwrap();
    assert!(
        matches!(&history.steps[0].outcome, StepOutcome::Error { message, .. } if message.contains("first failed"))
    );
    engine.shutdown().await;
    let engine = open(dir.path()).await;
    assert_eq!(
        engine.run(flaky, "retry-3", 4).await.unwrap(),
        Err("first failed".into())
    );
    assert_eq!(ran("retry-3/first"), 3);
}

static PANICS: Mutex<u32> = Mutex::new(0);

#[durable(name = "panicky")]
async fn panics(_ctx: &Ctx, times: u32) -> Result<u32, String> {
    let v = step!(
        "maybe-panic",
        retry = fast_retry(),
        async {
            let mut p = PANICS.lock().unwrap();
            *p += 1;
            if *p <= times {
                drop(p);
                panic!("boom {times}");
            }
            Ok::<u32, String>(*p)
        }
        .await
    )?;
    Ok(v)
}

#[tokio::test]
async fn a_panicking_body_is_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    *PANICS.lock().unwrap() = 0;
    assert_eq!(engine.run(panics, "panic-1", 2).await.unwrap(), Ok(3));
    *PANICS.lock().unwrap() = 0;
    let err = engine.run(panics, "panic-2", 10).await.unwrap_err();
    assert!(
        matches!(&err, Error::Instance(InstanceError::StepPanicked { instance, step, message, .. }) if instance == "panic-2" && step == "maybe-panic" && message.contains("boom")),
        "{err:?}"
    );
    assert!(matches!(
        engine.status("panic-2").await.unwrap(),
        Status::Failed { .. }
    ));
    assert_eq!(engine.history("panic-2").await.unwrap().workflow, "panicky");
}

#[tokio::test]
async fn bad_input_gives_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .path(dir.path())
        .register(order)
        .max_value_size(64)
        .open()
        .await
        .unwrap();
    assert!(matches!(
        engine.run(order, "", Order { items: vec![] }).await,
        Err(Error::Usage(UsageError::InvalidId { .. }))
    ));
    let long = "x".repeat(durable::MAX_ID_LEN + 1);
    assert!(matches!(
        engine.run(order, long, Order { items: vec![] }).await,
        Err(Error::Usage(UsageError::InvalidId { .. }))
    ));
    assert!(
        matches!(engine.run(flaky, "unregistered", 1).await, Err(Error::Usage(UsageError::NotRegistered { workflow })) if workflow == "flaky")
    );
    let big = Order {
        items: (0..100).collect(),
    };
    assert!(matches!(
        engine.run(order, "big", big).await,
        Err(Error::Replay(ReplayError::ValueTooLarge { .. }))
    ));
    assert!(matches!(
        engine.status("nope").await,
        Err(Error::Usage(UsageError::NotFound { .. }))
    ));
    // Odd ids are fine and do not collide.
    for id in ["a/b", "a", "ab", "a\0b", "ü", " "] {
        assert_eq!(
            engine
                .run(order, id, Order { items: vec![1] })
                .await
                .unwrap(),
            Ok(2_01)
        );
    }
}

#[durable]
async fn keys(ctx: &Ctx, _n: u32) -> Result<Vec<String>, String> {
    let mut keys = vec![ctx.idempotency_key()];
    for _ in 0..2 {
        keys.push(step!(
            "key",
            async { Ok::<_, String>(ctx.idempotency_key()) }.await
        )?);
    }
    keys.push(step!(
        "other",
        async { Ok::<_, String>(ctx.idempotency_key()) }.await
    )?);
    Ok(keys)
}

#[tokio::test]
async fn idempotency_keys_are_stable_and_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .path(dir.path())
        .register(keys)
        .open()
        .await
        .unwrap();
    let a = engine.run(keys, "k-1", 0).await.unwrap().unwrap();
    let b = engine.run(keys, "k-2", 0).await.unwrap().unwrap();
    let mut all: Vec<&String> = a.iter().chain(&b).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 8, "{a:?} {b:?}");
    assert!(a[1].contains("k-1") && a[1].contains("key"));
}

/// A chain of short durable sleeps: keeps the claim loop and the instance
/// tasks busy.
#[durable]
async fn napper(ctx: &Ctx, naps: u32) -> Result<u32, String> {
    for _ in 0..naps {
        ctx.sleep("nap", Duration::from_millis(1)).await;
    }
    Ok(naps)
}

async fn reopen_after_shutdown_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20u32 {
        let engine = Engine::builder()
            .path(dir.path())
            .register(napper)
            .open()
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopen after shutdown: {e}"));
        for i in 0..20 {
            let _ = engine.start(napper, format!("nap-{round}-{i}"), 50).await;
        }
        tokio::task::yield_now().await;
        engine.shutdown().await;
    }
}

/// On one thread an aborted task is dropped only when the runtime polls it
/// again: shutdown must wait for that before it returns.
#[tokio::test(flavor = "current_thread")]
async fn a_store_reopens_right_after_shutdown_on_one_thread() {
    reopen_after_shutdown_in_flight().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_reopens_right_after_shutdown_on_many_threads() {
    reopen_after_shutdown_in_flight().await;
}
