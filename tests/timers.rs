//! Guards durable timers, external events and cancellation: a sleep's wake
//! time survives a restart, events are kept until consumed (also when sent
//! while the workflow's process is down), waits time out, cancel stops
//! sleeping and running instances, payload types are checked, and parked
//! instances hold no task.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use durable::prelude::*;
use durable::{Status, StepOutcome, TransitionKind};
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

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

fn builder(dir: &std::path::Path) -> durable::EngineBuilder {
    Engine::builder()
        .path(dir)
        .register(nap)
        .register(approval)
        .register(two_events)
}

#[tokio::test]
async fn a_sleep_survives_a_restart_and_keeps_its_wake_time() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    let started = SystemTime::now();
    let _handle = engine.start(nap, "nap-1", 2_500).await.unwrap();
    wait_until("the sleep to park", async || {
        matches!(engine.status("nap-1").await, Ok(Status::Sleeping { .. }))
    })
    .await;
    let Ok(Status::Sleeping { until }) = engine.status("nap-1").await else {
        unreachable!()
    };
    let expected = started + Duration::from_millis(2_500);
    assert!(
        until >= expected - Duration::from_millis(200)
            && until <= expected + Duration::from_millis(500),
        "{until:?}"
    );
    engine.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let engine = builder(dir.path()).open().await.unwrap();
    assert_eq!(engine.recovery().parked, 1);
    assert!(
        matches!(engine.status("nap-1").await.unwrap(), Status::Sleeping { until: u } if u == until)
    );
    let out = engine
        .attach(nap, "nap-1")
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let woke = SystemTime::now();
    assert_eq!(out, Ok(2_500));
    assert!(woke >= until, "woke {woke:?} before {until:?}");
    assert!(
        woke <= until + Duration::from_millis(1_500),
        "woke {woke:?}, long after {until:?}"
    );
    assert_eq!(ran("nap-1/before"), 1);
    assert_eq!(ran("nap-1/after"), 1);
    let history = engine.history("nap-1").await.unwrap();
    assert!(history.steps.iter().any(|s| s.name == "nap"
        && matches!(s.outcome, StepOutcome::Sleeping { until: u } if u == until)));
}

#[tokio::test]
async fn a_sleep_that_ended_while_down_completes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    let _handle = engine.start(nap, "nap-2", 1_200).await.unwrap();
    wait_until("the sleep to park", async || {
        matches!(engine.status("nap-2").await, Ok(Status::Sleeping { .. }))
    })
    .await;
    engine.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let engine = builder(dir.path()).open().await.unwrap();
    let t = Instant::now();
    assert_eq!(
        engine
            .attach(nap, "nap-2")
            .await
            .unwrap()
            .result()
            .await
            .unwrap(),
        Ok(1_200)
    );
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn events_are_consumed_once_in_order_even_when_sent_early() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    // The instance exists but has not reached its wait: the event is kept.
    let handle = engine.start(two_events, "ev-1", 0).await.unwrap();
    engine.send_event("ev-1", "number", 7u32).await.unwrap();
    wait_until("the second wait to park", async || {
        matches!(engine.status("ev-1").await, Ok(Status::Waiting { .. }))
    })
    .await;
    assert!(
        matches!(engine.status("ev-1").await.unwrap(), Status::Waiting { event, until: None } if event == "number")
    );
    engine.send_event("ev-1", "number", 8u32).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), Ok(vec![7, 8]));
    assert_eq!(ran("ev-1/record"), 2);
    // A duplicate after consumption is refused: the instance has finished.
    let again = engine.send_event("ev-1", "number", 8u32).await;
    assert!(
        matches!(
            again,
            Err(Error::InstanceFinished {
                status: "completed",
                ..
            })
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
    wait_until("the wait to park", async || {
        matches!(engine.status("ap-1").await, Ok(Status::Waiting { .. }))
    })
    .await;
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
    let out = engine
        .attach(approval, "ap-1")
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(out, Ok("approved by mia".into()));
    assert_eq!(ran("ap-1/draft"), 1);
    assert_eq!(ran("ap-1/provision"), 1);
}

#[tokio::test]
async fn a_wait_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    let t = Instant::now();
    assert_eq!(
        engine.run(approval, "ap-2", 300).await.unwrap(),
        Ok("timed out".into())
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    // After the timeout the instance is finished; the event is refused.
    let late = engine
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
        matches!(late, Err(Error::InstanceFinished { .. })),
        "{late:?}"
    );
    // A long timeout parks, and survives a restart.
    let _h = engine.start(approval, "ap-3", 1_500).await.unwrap();
    wait_until("the wait to park", async || {
        matches!(
            engine.status("ap-3").await,
            Ok(Status::Waiting { until: Some(_), .. })
        )
    })
    .await;
    engine.shutdown().await;
    let engine = builder(dir.path()).open().await.unwrap();
    assert_eq!(
        engine
            .attach(approval, "ap-3")
            .await
            .unwrap()
            .result()
            .await
            .unwrap(),
        Ok("timed out".into())
    );
}

#[tokio::test]
async fn events_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    let missing = engine.send_event("nobody", "approval", 1u32).await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );

    let handle = engine.start(approval, "ap-4", 3_600_000).await.unwrap();
    wait_until("the wait to park", async || {
        matches!(engine.status("ap-4").await, Ok(Status::Waiting { .. }))
    })
    .await;
    let wrong = engine
        .send_event("ap-4", "approval", "yes".to_string())
        .await;
    match &wrong {
        Err(Error::EventTypeMismatch {
            instance,
            event,
            expected,
            got,
        }) => {
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
    assert_eq!(handle.result().await.unwrap(), Ok("rejected by lee".into()));

    // A payload of another shape is refused when sent, even before the
    // instance reaches its wait, so it can never block the instance.
    let handle = engine.start(two_events, "ev-bad", 0).await.unwrap();
    let refused = engine
        .send_event("ev-bad", "number", "not a number".to_string())
        .await;
    assert!(
        matches!(&refused, Err(Error::EventTypeMismatch { expected, got, .. }) if expected == "u32" && got == "str"),
        "{refused:?}"
    );
    engine.send_event("ev-bad", "number", 1u32).await.unwrap();
    engine.send_event("ev-bad", "number", 2u32).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), Ok(vec![1, 2]));
}

static LONG_STEP: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn long_running(ctx: &Ctx, _n: u32) -> Result<(), String> {
    step!(
        "slow",
        async {
            LONG_STEP.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
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
    wait_until("the sleep to park", async || {
        matches!(engine.status("c-1").await, Ok(Status::Sleeping { .. }))
    })
    .await;
    let t = Instant::now();
    engine.cancel("c-1").await.unwrap();
    assert!(matches!(
        sleeping.result().await,
        Err(Error::Cancelled { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(engine.status("c-1").await.unwrap(), Status::Cancelled);
    assert!(matches!(
        engine.cancel("c-1").await,
        Err(Error::InstanceFinished {
            status: "cancelled",
            ..
        })
    ));

    let running = engine.start(long_running, "c-2", 0).await.unwrap();
    wait_until("the slow step to start", async || {
        LONG_STEP.load(Ordering::SeqCst) == 1
    })
    .await;
    engine.cancel("c-2").await.unwrap();
    assert!(matches!(
        running.result().await,
        Err(Error::Cancelled { .. })
    ));
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
        Err(Error::Cancelled { .. })
    ));
}

#[tokio::test]
async fn ten_thousand_instances_park() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(dir.path()).open().await.unwrap();
    let n = 10_000;
    let mut starts = Vec::new();
    for i in 0..n {
        let engine = engine.clone();
        starts.push(tokio::spawn(async move {
            // Handles are dropped: a parked instance keeps nothing for them.
            drop(
                engine
                    .start(nap, format!("park-{i}"), 3_600_000)
                    .await
                    .unwrap(),
            );
        }));
    }
    for s in starts {
        s.await.unwrap();
    }
    let all_parked = async |ids: &mut dyn Iterator<Item = usize>| {
        for i in ids {
            if !matches!(
                engine.status(&format!("park-{i}")).await,
                Ok(Status::Sleeping { .. })
            ) {
                return false;
            }
        }
        true
    };
    wait_until("all to park", async || {
        all_parked(&mut (0..n).step_by(997)).await
    })
    .await;
    wait_until("every instance to park", async || {
        all_parked(&mut (0..n)).await
    })
    .await;
    engine.shutdown().await;
    let engine = builder(dir.path()).open().await.unwrap();
    assert_eq!(engine.recovery().parked, n);
    assert_eq!(engine.recovery().resumed, 0);
}
