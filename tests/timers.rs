//! Guards durable timers, external events and cancellation: a sleep's wake
//! time survives a restart, events are kept until consumed (also when sent
//! while the workflow's process is down), waits time out, cancel stops
//! sleeping and running instances, payload types are checked, and parked
//! instances hold no task.
//!
//! Nothing here depends on the machine's speed. The tests of sleeps and
//! timeouts run on the test kit (`durable::testing::TestEngine`): its clock
//! moves only when a test moves it, and a restart is `kit.restart`, so an
//! hour's sleep across a restart is checked to the millisecond without
//! waiting for it. The other tests wait for statuses, not for clocks, under
//! a hang guard (`support::wait_until`).

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use durable::prelude::*;
use durable::testing::TestEngine;
use durable::{History, Status, StepOutcome, TransitionKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Approval {
    approved: bool,
    by: String,
}

/// Step bodies that ran, as "instance/step".
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn effect(ctx: &Ctx, step: &str) -> Result<(), String> {
    LOG.lock().unwrap().push(format!("{}/{step}", ctx.id()));
    Ok(())
}

fn ran(entry: &str) -> usize {
    LOG.lock().unwrap().iter().filter(|e| *e == entry).count()
}

/// Waits until `id` is parked in a sleep and returns its deadline; `None`
/// if it completed first (its timer ran out before the test looked).
async fn parked_sleep(engine: &Engine, id: &str) -> Option<SystemTime> {
    support::wait_until(&format!("{id} to park in its sleep"), async || match engine
        .status(id)
        .await
    {
        Ok(Status::Sleeping { until }) => Ok(Some(until)),
        Ok(Status::Completed { .. }) => Ok(None),
        Ok(running @ Status::Running { .. }) => Err(running),
        other => panic!("{id} is {other:?} instead of sleeping"),
    })
    .await
}

/// Waits until `id` is parked in a wait for an event and returns its
/// timeout; `Err` if it completed first.
async fn parked_wait(engine: &Engine, id: &str) -> Result<Option<SystemTime>, Status> {
    support::wait_until(
        &format!("{id} to park in its wait"),
        async || match engine.status(id).await {
            Ok(Status::Waiting { until, .. }) => Ok(Ok(until)),
            Ok(done @ Status::Completed { .. }) => Ok(Err(done)),
            Ok(running @ Status::Running { .. }) => Err(running),
            other => panic!("{id} is {other:?} instead of waiting"),
        },
    )
    .await
}

/// When step `name` of `history` started.
fn step_started(history: &History, name: &str) -> SystemTime {
    history
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {history:?}"))
        .started_at
}

#[durable]
async fn nap(ctx: &Ctx, millis: u64) -> Result<u64, String> {
    step!("before", effect(ctx, "before").await)?;
    sleep!("nap", Duration::from_millis(millis));
    step!("after", effect(ctx, "after").await)?;
    Ok(millis)
}

#[durable]
async fn approval(ctx: &Ctx, timeout_ms: u64) -> Result<String, String> {
    step!("draft", effect(ctx, "draft").await)?;
    let decision: Option<Approval> =
        wait_for!("approval", timeout = Duration::from_millis(timeout_ms));
    match decision {
        Some(a) if a.approved => {
            step!("provision", effect(ctx, "provision").await)?;
            Ok(format!("approved by {}", a.by))
        }
        Some(a) => Ok(format!("rejected by {}", a.by)),
        None => Ok("timed out".into()),
    }
}

#[durable]
async fn two_events(ctx: &Ctx, _n: u32) -> Result<Vec<u32>, String> {
    let mut got = Vec::new();
    for _ in 0..2 {
        let n: u32 = wait_for!("number");
        got.push(n);
        step!("record", effect(ctx, "record").await)?;
    }
    Ok(got)
}

#[durable]
async fn one_event(_ctx: &Ctx, _n: u32) -> Result<u32, String> {
    let n: u32 = wait_for!("number");
    Ok(n)
}

fn builder(dir: &std::path::Path) -> durable::EngineBuilder {
    Engine::builder()
        .path(dir)
        .register(nap)
        .register(approval)
        .register(two_events)
        .register(one_event)
}

/// The registry of the kit's tests (the kit brings its own store and clock).
fn kit_builder() -> durable::EngineBuilder {
    Engine::builder()
        .register(nap)
        .register(approval)
        .register(two_events)
}

const MINUTE: Duration = Duration::from_secs(60);
const MS: Duration = Duration::from_millis(1);
const HOUR_MS: u64 = 3_600_000;

#[tokio::test]
async fn a_sleep_survives_a_restart_and_keeps_its_wake_time() {
    let kit = TestEngine::open(kit_builder()).await.unwrap();
    let started = kit.clock().now();
    let _handle = kit.start(nap, "nap-1", HOUR_MS).await.unwrap();
    kit.run_until_idle().await;
    // The deadline is the moment the sleep was first reached plus its
    // duration (the clock has not moved).
    let until = started + Duration::from_millis(HOUR_MS);
    assert_eq!(
        kit.status("nap-1").await.unwrap(),
        Status::Sleeping { until }
    );
    // Down for twenty minutes.
    let kit = kit.restart(kit_builder(), 20 * MINUTE).await.unwrap();
    assert_eq!(kit.recovery().parked, 1, "{:?}", kit.recovery());
    // Parked again on the stored deadline: not restarted, not lost.
    assert_eq!(
        kit.status("nap-1").await.unwrap(),
        Status::Sleeping { until }
    );
    let handle = kit.attach(nap, "nap-1").await.unwrap();
    kit.advance(40 * MINUTE - MS).await;
    assert_eq!(
        kit.status("nap-1").await.unwrap(),
        Status::Sleeping { until },
        "a millisecond before its stored deadline"
    );
    kit.advance(MS).await;
    let out = support::guarded("the sleep to end", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(HOUR_MS));
    assert_eq!(kit.clock().now(), until);
    assert_eq!(ran("nap-1/before"), 1);
    assert_eq!(ran("nap-1/after"), 1);
    let history = kit.history("nap-1").await.unwrap();
    assert!(history.steps.iter().any(|s| s.name == "nap"
        && matches!(s.outcome, StepOutcome::Sleeping { until: u } if u == until)));
    assert_eq!(step_started(&history, "after"), until);
    kit.shutdown().await;
}

#[tokio::test]
async fn a_sleep_that_ended_while_down_completes_at_once() {
    let kit = TestEngine::open(kit_builder()).await.unwrap();
    let _handle = kit.start(nap, "nap-2", HOUR_MS).await.unwrap();
    kit.run_until_idle().await;
    let Status::Sleeping { until } = kit.status("nap-2").await.unwrap() else {
        panic!("nap-2 does not sleep");
    };
    // Down until well past the deadline.
    let kit = kit.restart(kit_builder(), 3 * 60 * MINUTE).await.unwrap();
    let back = kit.clock().now();
    assert!(back > until);
    let handle = kit.attach(nap, "nap-2").await.unwrap();
    // At once: without the clock moving.
    kit.run_until_idle().await;
    let out = support::guarded("the result", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(HOUR_MS));
    assert_eq!(kit.clock().now(), back);
    assert_eq!(ran("nap-2/after"), 1);
    let history = kit.history("nap-2").await.unwrap();
    assert!(history.steps.iter().any(|s| s.name == "nap"
        && matches!(s.outcome, StepOutcome::Sleeping { until: u } if u == until)));
    assert_eq!(step_started(&history, "after"), back);
    kit.shutdown().await;
}

#[tokio::test]
async fn events_are_consumed_once_in_order_even_when_sent_early() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    // The instance exists but has not reached its wait: the event is kept.
    let handle = engine.start(two_events, "ev-1", 0).await.unwrap();
    engine.send_event("ev-1", "number", 7u32).await.unwrap();
    let until = parked_wait(&engine, "ev-1").await;
    assert_eq!(until, Ok(None), "the second wait has no timeout");
    assert!(
        matches!(engine.status("ev-1").await.unwrap(), Status::Waiting { event, until: None } if event == "number")
    );
    engine.send_event("ev-1", "number", 8u32).await.unwrap();
    assert_eq!(
        support::guarded("the result", handle.result())
            .await
            .unwrap(),
        Ok(vec![7, 8])
    );
    assert_eq!(ran("ev-1/record"), 2);
    // A duplicate after consumption is refused: the instance has finished.
    let again = engine.send_event("ev-1", "number", 8u32).await;
    assert!(
        matches!(
            again,
            Err(Error::Usage(UsageError::InstanceFinished {
                status: "completed",
                ..
            }))
        ),
        "{again:?}"
    );
    assert_eq!(
        engine.run(two_events, "ev-1", 0).await.unwrap(),
        Ok(vec![7, 8])
    );
    let history = engine.history("ev-1").await.unwrap();
    assert_eq!(
        history
            .steps
            .iter()
            .filter(|s| matches!(s.outcome, StepOutcome::Received { .. }))
            .count(),
        2
    );
}

#[tokio::test]
async fn an_event_sent_while_the_workflow_is_down_is_consumed_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    let _handle = engine.start(approval, "ap-1", 3_600_000).await.unwrap();
    assert!(parked_wait(&engine, "ap-1").await.is_ok());
    engine.shutdown().await;

    // Another process without the workflow (an API server, say) sends the event.
    let sender = Engine::builder().path(dir.path()).open().await.unwrap();
    assert_eq!(sender.recovery().skipped.len(), 1);
    sender
        .send_event(
            "ap-1",
            "approval",
            Approval {
                approved: true,
                by: "mia".into(),
            },
        )
        .await
        .unwrap();
    sender.shutdown().await;

    let engine = builder(dir.path()).open().await.unwrap();
    let handle = engine.attach(approval, "ap-1").await.unwrap();
    let out = support::guarded("the result", handle.result()).await;
    assert_eq!(out.unwrap(), Ok("approved by mia".into()));
    assert_eq!(ran("ap-1/draft"), 1);
    assert_eq!(ran("ap-1/provision"), 1);
}

/// An event wakes a parked instance while a start of the same id attaches
/// to it: the claim round and the starter ask for the one claim, and
/// whichever gets it runs the instance. (A claim round that won it used to
/// let go of it again, seeing the starter's slot; the starter, refused, left
/// the instance to nobody and its handle waited forever.) The race is
/// narrow, so it is run on many instances at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_racing_an_events_wake_up_still_runs_the_instance() {
    const INSTANCES: u32 = 200;
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    let id = |i: u32| format!("race-{i}");
    for i in 0..INSTANCES {
        // The handle is dropped: nothing here holds the instance's slot.
        let _ = engine.start(one_event, &id(i), i).await.unwrap();
    }
    for i in 0..INSTANCES {
        assert!(parked_wait(&engine, &id(i)).await.is_ok());
    }
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..INSTANCES {
        let (engine, id) = (engine.clone(), id(i));
        runs.spawn(async move {
            engine.send_event(&id, "number", i).await.unwrap();
            let out = engine.run(one_event, &id, i).await.unwrap();
            assert_eq!(out, Ok(i), "{id}");
        });
    }
    support::guarded("every raced instance completes", async {
        while let Some(run) = runs.join_next().await {
            run.unwrap();
        }
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn a_wait_times_out() {
    let kit = TestEngine::open(kit_builder()).await.unwrap();
    let started = kit.clock().now();
    let handle = kit.start(approval, "ap-2", 300).await.unwrap();
    kit.run_until_idle().await;
    // A short wait is held in its task (not parked); it still waits for
    // the clock.
    kit.advance(299 * MS).await;
    let status = kit.status("ap-2").await.unwrap();
    assert!(
        matches!(status, Status::Running { .. }),
        "{status:?} a millisecond before the timeout"
    );
    kit.advance(MS).await;
    assert_eq!(
        support::guarded("the run", handle.result()).await.unwrap(),
        Ok("timed out".into())
    );
    assert_eq!(kit.clock().now(), started + 300 * MS);
    // After the timeout the instance is finished; the event is refused.
    let late = kit
        .send_event(
            "ap-2",
            "approval",
            Approval {
                approved: true,
                by: "x".into(),
            },
        )
        .await;
    assert!(
        matches!(late, Err(Error::Usage(UsageError::InstanceFinished { .. }))),
        "{late:?}"
    );
    kit.shutdown().await;
}

#[tokio::test]
async fn a_long_wait_parks_and_times_out_after_a_restart() {
    let kit = TestEngine::open(kit_builder()).await.unwrap();
    let _h = kit.start(approval, "ap-3", 2 * HOUR_MS).await.unwrap();
    kit.run_until_idle().await;
    let Status::Waiting {
        until: Some(until), ..
    } = kit.status("ap-3").await.unwrap()
    else {
        panic!("ap-3 does not wait with its timeout");
    };
    let kit = kit.restart(kit_builder(), 60 * MINUTE).await.unwrap();
    assert_eq!(kit.recovery().parked, 1, "{:?}", kit.recovery());
    let handle = kit.attach(approval, "ap-3").await.unwrap();
    kit.advance(60 * MINUTE - MS).await;
    assert!(matches!(
        kit.status("ap-3").await.unwrap(),
        Status::Waiting { .. }
    ));
    kit.advance(MS).await;
    let out = support::guarded("the wait to time out", handle.result()).await;
    assert_eq!(out.unwrap(), Ok("timed out".into()));
    assert_eq!(kit.clock().now(), until);
    let history = kit.history("ap-3").await.unwrap();
    assert!(
        history
            .steps
            .iter()
            .any(|s| s.name == "approval" && s.outcome == StepOutcome::TimedOut),
        "{history:?}"
    );
    kit.shutdown().await;
}

#[tokio::test]
async fn events_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    let missing = engine.send_event("nobody", "approval", 1u32).await;
    assert!(
        matches!(missing, Err(Error::Usage(UsageError::NotFound { .. }))),
        "{missing:?}"
    );

    let handle = engine.start(approval, "ap-4", 3_600_000).await.unwrap();
    assert!(parked_wait(&engine, "ap-4").await.is_ok());
    let wrong = engine
        .send_event("ap-4", "approval", "yes".to_string())
        .await;
    match &wrong {
        Err(Error::Usage(UsageError::EventTypeMismatch {
            instance,
            event,
            expected,
            got,
        })) => {
            assert_eq!((instance.as_str(), event.as_str()), ("ap-4", "approval"));
            assert_eq!(
                (expected.as_str(), got.as_str()),
                ("{approved: bool, by: str}", "str")
            );
        }
        other => panic!("expected EventTypeMismatch, got {other:?}"),
    }
    // Nothing was delivered: the right payload is still the first event.
    engine
        .send_event(
            "ap-4",
            "approval",
            Approval {
                approved: false,
                by: "lee".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        support::guarded("the result", handle.result())
            .await
            .unwrap(),
        Ok("rejected by lee".into())
    );

    // A payload of another shape is refused when sent, even before the
    // instance reaches its wait, so it can never block the instance.
    let handle = engine.start(two_events, "ev-bad", 0).await.unwrap();
    let refused = engine
        .send_event("ev-bad", "number", "not a number".to_string())
        .await;
    assert!(
        matches!(&refused, Err(Error::Usage(UsageError::EventTypeMismatch { expected, got, .. })) if expected == "u32" && got == "str"),
        "{refused:?}"
    );
    engine.send_event("ev-bad", "number", 1u32).await.unwrap();
    engine.send_event("ev-bad", "number", 2u32).await.unwrap();
    assert_eq!(
        support::guarded("the result", handle.result())
            .await
            .unwrap(),
        Ok(vec![1, 2])
    );
}

/// Times the body of `long_running`'s "slow" step began.
static LONG_STEP: AtomicU32 = AtomicU32::new(0);
/// Lets the body of `long_running`'s "slow" step end.
static LONG_RELEASE: AtomicBool = AtomicBool::new(false);

#[durable]
async fn long_running(ctx: &Ctx, _n: u32) -> Result<(), String> {
    step!(
        "slow",
        async {
            LONG_STEP.fetch_add(1, Ordering::SeqCst);
            while !LONG_RELEASE.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, String>(())
        }
        .await
    )?;
    step!("never", effect(ctx, "never").await)?;
    Ok(())
}

#[tokio::test]
async fn cancel_stops_sleeping_and_running_instances() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path())
        .register(long_running)
        .open()
        .await
        .unwrap();
    let sleeping = engine.start(nap, "c-1", 3_600_000).await.unwrap();
    let until = parked_sleep(&engine, "c-1")
        .await
        .expect("an hour's sleep is parked");
    engine.cancel("c-1").await.unwrap();
    let out = support::guarded("the cancelled sleeper to end", sleeping.result()).await;
    assert!(
        matches!(out, Err(Error::Instance(InstanceError::Cancelled { .. }))),
        "{out:?}"
    );
    // Ended by the cancel, not by its timer an hour away.
    assert!(SystemTime::now() < until);
    assert_eq!(ran("c-1/after"), 0);
    assert_eq!(engine.status("c-1").await.unwrap(), Status::Cancelled);
    assert!(matches!(
        engine.cancel("c-1").await,
        Err(Error::Usage(UsageError::InstanceFinished {
            status: "cancelled",
            ..
        }))
    ));

    // Cancelled while its step runs: the step finishes, no step starts after.
    let running = engine.start(long_running, "c-2", 0).await.unwrap();
    support::wait_until("the slow step to start", async || {
        match LONG_STEP.load(Ordering::SeqCst) {
            1 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    // The step ends only once the cancel is recorded (whether or not
    // `cancel` waits for it).
    let (cancelled, ()) = tokio::join!(engine.cancel("c-2"), async {
        support::wait_until("the cancel to be recorded", async || {
            match engine.status("c-2").await {
                Ok(Status::Cancelled) => Ok(()),
                other => Err(other),
            }
        })
        .await;
        LONG_RELEASE.store(true, Ordering::SeqCst);
    });
    cancelled.unwrap();
    let out = support::guarded("the cancelled instance to end", running.result()).await;
    assert!(
        matches!(out, Err(Error::Instance(InstanceError::Cancelled { .. }))),
        "{out:?}"
    );
    assert_eq!(ran("c-2/never"), 0, "a step started after cancel");
    let history = engine.history("c-2").await.unwrap();
    assert_eq!(history.status, Status::Cancelled);
    assert_eq!(
        history.transitions.last().map(|t| &t.kind),
        Some(&TransitionKind::Cancelled)
    );
    // Cancel is durable.
    engine.shutdown().await;
    let engine = builder(dir.path())
        .register(long_running)
        .open()
        .await
        .unwrap();
    assert_eq!(engine.status("c-2").await.unwrap(), Status::Cancelled);
    assert!(matches!(
        engine.run(long_running, "c-2", 0).await,
        Err(Error::Instance(InstanceError::Cancelled { .. }))
    ));
    assert_eq!(LONG_STEP.load(Ordering::SeqCst), 1);
    assert_eq!(ran("c-2/never"), 0);
}

/// Many parked instances at once: each holds no task, shows its deadline,
/// and is parked again by the next open. On the test kit: the clock does
/// not move, so every one of them is still asleep when the test looks, and
/// `run_until_idle` returns once all have parked. How fast they park on
/// disk is the benchmark's business (`benches/durable.rs`, scenario 7),
/// not this test's.
#[tokio::test]
async fn ten_thousand_instances_park() {
    let kit = TestEngine::open(kit_builder()).await.unwrap();
    let n = 10_000;
    let mut starts = Vec::new();
    for i in 0..n {
        let engine = kit.engine().clone();
        starts.push(tokio::spawn(async move {
            // Handles are dropped: a parked instance keeps nothing for them.
            drop(
                engine
                    .start(nap, format!("park-{i}"), HOUR_MS)
                    .await
                    .unwrap(),
            );
        }));
    }
    for s in starts {
        s.await.unwrap();
    }
    kit.run_until_idle().await;
    let until = kit.clock().now() + Duration::from_millis(HOUR_MS);
    for i in 0..n {
        let id = format!("park-{i}");
        assert_eq!(
            kit.status(&id).await.unwrap(),
            Status::Sleeping { until },
            "{id}"
        );
    }
    let kit = kit.restart(kit_builder(), Duration::ZERO).await.unwrap();
    assert_eq!(kit.recovery().parked, n);
    assert_eq!(kit.recovery().resumed, 0);
    kit.shutdown().await;
}
