//! Guards the metrics the runtime records through the `metrics` facade
//! (feature `metrics`): an engine on a real store in a temp dir, with a
//! manual clock, runs a workflow whose step fails once then succeeds and
//! which parks in a sleep and in a wait for an event, a workflow whose step
//! panics (the instance fails), and one cancelled while parked. The test
//! installs `metrics-util`'s debugging recorder as this binary's global
//! recorder (the engine records from its own tasks and its committer
//! thread) and checks the counters' values, the parked gauge, that the
//! histograms got samples (the claim lag exactly: the clock moves only when
//! the test moves it), and that no metric is labelled by instance id.
//!
//! With the feature `postgres` as well, a sleep on PostgreSQL follows
//! (`pg.rs`): the backend's group commits and its claim of a due timer.
//!
//! `cargo test --features metrics,postgres --test metrics` (or `--features
//! metrics` for the embedded part alone). One test: the recorder is global
//! to the binary.
#![cfg(feature = "metrics")]

#[cfg(feature = "postgres")]
mod pg;
mod seen;
#[path = "../support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use durable::metrics;
use durable::prelude::*;
use durable::time::ManualClock;
use durable::{Engine, Status};
use metrics_util::debugging::DebuggingRecorder;
use seen::Seen;

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn ordered(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .initial_delay(Duration::ZERO)
        .max_delay(Duration::ZERO)
        .jitter(0.0);
    let first = step!(
        "flaky",
        retry = policy,
        async {
            if FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("the first call fails".to_string())
            } else {
                Ok(n)
            }
        }
        .await
    )?;
    sleep!("cool-off", Duration::from_secs(3600));
    let go: u32 = wait_for!("go");
    step!("after", Ok::<u32, String>(first + go))
}

#[durable]
async fn doomed(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    step!(
        "boom",
        retry = RetryPolicy::no_retry(),
        async {
            if n > 0 {
                panic!("the step panics");
            }
            Ok::<u32, String>(n)
        }
        .await
    )
}

#[durable]
async fn sleeper(_ctx: &Ctx, _n: u32) -> Result<(), String> {
    sleep!("nap", Duration::from_secs(10 * 3600));
    Ok(())
}

/// Waits until `id`'s status passes `parked`, under the hang guard.
async fn wait_status(engine: &Engine, id: &str, what: &str, parked: fn(&Status) -> bool) {
    support::wait_until(&format!("{id} {what}"), async || {
        match engine.status(id).await {
            Ok(status) if parked(&status) => Ok(()),
            other => Err(other),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_instances_steps_commits_parking_and_claims() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");
    let mut seen = Seen::default();

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let engine = Engine::builder()
        .path(dir.path().join("store"))
        .clock(clock.clone())
        .register(ordered)
        .register(doomed)
        .register(sleeper)
        .open()
        .await
        .unwrap();

    // A step that fails once, then succeeds; then a sleep that parks.
    let handle = engine.start(ordered, "m-ordered", 5).await.unwrap();
    wait_status(&engine, "m-ordered", "to park in its sleep", |s| {
        matches!(s, Status::Sleeping { .. })
    })
    .await;
    seen.take(&snapshotter);
    let flaky = [("workflow", "ordered"), ("step", "flaky")];
    assert_eq!(seen.value(metrics::STEP_RETRIES, &flaky), 1.0);
    assert_eq!(
        seen.value(metrics::STEPS, &[flaky[0], flaky[1], ("outcome", "ran")]),
        1.0
    );
    assert_eq!(
        seen.samples_of(metrics::STEP_DURATION, &flaky).len(),
        2,
        "one body run per attempt"
    );
    seen.until(&snapshotter, "one parked instance", |seen| {
        seen.value(metrics::PARKED_INSTANCES, &[]) == 1.0
    })
    .await;

    // Five seconds past the timer: claimed exactly that late (the clock
    // moves only here). Woken, it replays its step and parks on the event.
    clock.advance(Duration::from_secs(3600 + 5));
    wait_status(&engine, "m-ordered", "to park in its wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    seen.until(&snapshotter, "one parked instance again", |seen| {
        seen.value(metrics::PARKED_INSTANCES, &[]) == 1.0
    })
    .await;
    assert_eq!(seen.samples(metrics::CLAIM_LAG), [5.0]);
    assert!(
        seen.value(
            metrics::STEPS,
            &[flaky[0], flaky[1], ("outcome", "replayed")]
        ) >= 1.0
    );

    engine.send_event("m-ordered", "go", 3u32).await.unwrap();
    let out = support::guarded("m-ordered's result", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(8));

    // A step that panics on its only attempt: the instance fails.
    let handle = engine.start(doomed, "m-doomed", 1).await.unwrap();
    let out = support::guarded("m-doomed's result", handle.result()).await;
    assert!(out.is_err(), "{out:?}");

    // Cancelled while parked.
    let handle = engine.start(sleeper, "m-sleeper", 0).await.unwrap();
    wait_status(&engine, "m-sleeper", "to park in its sleep", |s| {
        matches!(s, Status::Sleeping { .. })
    })
    .await;
    engine.cancel("m-sleeper").await.unwrap();
    let out = support::guarded("m-sleeper's result", handle.result()).await;
    assert!(out.is_err(), "{out:?}");
    engine.shutdown().await;
    seen.take(&snapshotter);

    let started = |wf| seen.value(metrics::INSTANCES_STARTED, &[("workflow", wf)]);
    assert_eq!(
        [started("ordered"), started("doomed"), started("sleeper")],
        [1.0; 3]
    );
    let finished = |wf, outcome| {
        seen.value(
            metrics::INSTANCES_FINISHED,
            &[("workflow", wf), ("outcome", outcome)],
        )
    };
    assert_eq!(finished("ordered", "completed"), 1.0);
    assert_eq!(finished("doomed", "failed"), 1.0);
    assert_eq!(finished("sleeper", "cancelled"), 1.0);
    let all_finished: f64 = seen
        .values
        .iter()
        .filter(|((name, _), _)| name == metrics::INSTANCES_FINISHED)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(all_finished, 3.0, "one end per instance");

    let step = |wf, step, outcome| {
        seen.value(
            metrics::STEPS,
            &[("workflow", wf), ("step", step), ("outcome", outcome)],
        )
    };
    assert_eq!(step("ordered", "flaky", "ran"), 1.0);
    assert_eq!(step("ordered", "after", "ran"), 1.0);
    assert_eq!(step("doomed", "boom", "failed"), 1.0);
    assert_eq!(step("ordered", "flaky", "failed"), 0.0);
    assert_eq!(seen.value(metrics::STEP_RETRIES, &flaky), 1.0);
    assert_eq!(
        seen.value(metrics::EVENTS_SENT, &[("workflow", "ordered")]),
        1.0
    );
    assert_eq!(seen.value(metrics::PARKED_INSTANCES, &[]), 0.0);
    assert_eq!(
        seen.samples_of(
            metrics::STEP_DURATION,
            &[("workflow", "doomed"), ("step", "boom")]
        )
        .len(),
        1
    );

    // Every group commit: a duration and a size of at least one write.
    let embedded = [("backend", "embedded")];
    let durations = seen.samples_of(metrics::COMMIT_DURATION, &embedded);
    let sizes = seen.samples_of(metrics::COMMIT_GROUP_SIZE, &embedded);
    assert!(!durations.is_empty());
    assert_eq!(durations.len(), sizes.len());
    assert!(durations.iter().all(|s| *s >= 0.0));
    assert!(sizes.iter().all(|n| *n >= 1.0), "{sizes:?}");
    // At least the three creations, the checkpoints, parks and ends.
    assert!(sizes.iter().sum::<f64>() >= 12.0, "{sizes:?}");

    // Described, with units, at engine open.
    for name in [
        metrics::STEP_DURATION,
        metrics::COMMIT_DURATION,
        metrics::CLAIM_LAG,
    ] {
        assert_eq!(
            seen.described.get(name),
            Some(&Some(::metrics::Unit::Seconds)),
            "{name}"
        );
    }

    // With the feature `postgres`: its group commits and claim lag.
    #[cfg(feature = "postgres")]
    pg::sleep_on_postgres(&mut seen, &snapshotter).await;

    // Never labelled by instance id (nor by anything unbounded).
    let ids = ["m-ordered", "m-doomed", "m-sleeper", "m-pg-sleeper"];
    let allowed = ["workflow", "step", "outcome", "backend"];
    for (name, labels) in seen.values.keys().chain(seen.samples.keys()) {
        assert!(name.starts_with("durable_"), "{name}");
        for (key, value) in labels {
            assert!(allowed.contains(&key.as_str()), "{name}: label {key}");
            assert!(
                !ids.iter().any(|id| value.contains(id)),
                "{name}: {key}={value}"
            );
        }
    }
}
