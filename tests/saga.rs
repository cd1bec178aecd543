//! Saga compensation (`step!(.., compensate = ..)`) on the embedded store.
//! Guards that the compensations of the steps that succeeded run in
//! reverse order when the workflow fails or is cancelled, that a failing
//! compensation stops the chain and is reported (outcome, status, history),
//! and that a SIGKILL in the middle of the chain resumes it without running
//! a finished compensation again (a ledger file records every body run).

mod support;

use std::path::Path;

use durable::prelude::*;
use durable::{History, InstanceError, Status, TransitionKind};
use serde::{Deserialize, Serialize};

/// What a trip books and how it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trip {
    /// The test directory (its ledger records every body run).
    pub dir: String,
    /// The booking whose undo fails, if any.
    pub failing_undo: Option<String>,
    /// Wait for event "go" after booking (to be cancelled there).
    pub wait: bool,
}

/// A booking, as its step returns it: all its undo needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Booking {
    /// The test directory.
    pub dir: String,
    /// What was booked.
    pub what: String,
    /// Whether its undo fails.
    pub fails: bool,
}

/// Set in the child of the crash test: the undo of the hotel never ends.
const CHILD_ENV: &str = "DURABLE_SAGA_CHILD";

fn book(trip: &Trip, what: &str) -> Result<Booking, String> {
    support::ledger_in(&trip.dir, &format!("book {what}"));
    Ok(Booking {
        dir: trip.dir.clone(),
        what: what.to_string(),
        fails: trip.failing_undo.as_deref() == Some(what),
    })
}

async fn cancel_booking(b: Booking) -> Result<(), String> {
    support::ledger_in(&b.dir, &format!("undo {}", b.what));
    if b.what == "hotel" && std::env::var_os(CHILD_ENV).is_some() {
        // The child is killed here, in the middle of the chain.
        std::future::pending::<()>().await;
    }
    if b.fails {
        return Err(format!("the {} cannot be cancelled", b.what));
    }
    Ok(())
}

#[durable]
async fn trip(_ctx: &Ctx, trip: Trip) -> Result<String, String> {
    let car = step!(
        "car",
        async { book(&trip, "car") }.await,
        compensate = |b: Booking| async move { cancel_booking(b).await }
    )?;
    // One attempt per undo: the step's retry policy is the compensation's.
    let hotel = step!(
        "hotel",
        retry = RetryPolicy::no_retry(),
        async { book(&trip, "hotel") }.await,
        compensate = |b: Booking| cancel_booking(b)
    )?;
    let flight = step!(
        "flight",
        async { book(&trip, "flight") }.await,
        compensate = |b: Booking| cancel_booking(b)
    )?;
    if trip.wait {
        let _go: String = wait_for!("go");
    }
    step!(
        "pay",
        async {
            support::ledger_in(&trip.dir, "pay");
            Err::<(), String>(durable::permanent("card declined".to_string()))
        }
        .await
    )?;
    Ok(format!("{} {} {}", car.what, hotel.what, flight.what))
}

async fn open(dir: &Path) -> Engine {
    Engine::builder()
        .path(dir.join("store"))
        .register(trip)
        .open()
        .await
        .unwrap()
}

fn input(dir: &Path) -> Trip {
    Trip {
        dir: dir.to_string_lossy().into_owned(),
        failing_undo: None,
        wait: false,
    }
}

fn kinds(history: &History) -> Vec<TransitionKind> {
    history.transitions.iter().map(|t| t.kind.clone()).collect()
}

#[tokio::test]
async fn compensations_run_in_reverse_when_the_workflow_fails() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let out = support::guarded("the trip ends", engine.run(trip, "t-1", input(dir.path())))
        .await
        .unwrap();
    assert_eq!(out, Err("card declined".to_string()));
    assert_eq!(
        support::read_ledger(dir.path()),
        [
            "book car",
            "book hotel",
            "book flight",
            "pay",
            "undo flight",
            "undo hotel",
            "undo car"
        ]
    );
    let history = engine.history("t-1").await.unwrap();
    assert!(
        kinds(&history).contains(&TransitionKind::Compensated { count: 3 }),
        "{:?}",
        history.transitions
    );
    let names: Vec<&str> = history.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "car",
            "hotel",
            "flight",
            "pay",
            "flight::compensate",
            "hotel::compensate",
            "car::compensate"
        ]
    );
    // Attaching again replays the end: nothing runs again.
    let again = engine.run(trip, "t-1", input(dir.path())).await.unwrap();
    assert_eq!(again, Err("card declined".to_string()));
    assert_eq!(support::read_ledger(dir.path()).len(), 7);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_failing_compensation_stops_the_chain_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let trip_in = Trip {
        failing_undo: Some("hotel".into()),
        ..input(dir.path())
    };
    let err = support::guarded("the trip ends", engine.run(trip, "t-2", trip_in))
        .await
        .unwrap_err();
    match &err {
        Error::Instance(InstanceError::CompensationFailed { step, error, .. }) => {
            assert_eq!(step, "hotel");
            assert!(error.contains("the hotel cannot be cancelled"), "{error}");
        }
        other => panic!("not a failed compensation: {other:?}"),
    }
    // The hotel's undo ran once (no retries: its step has none), the car's never.
    assert_eq!(
        support::read_ledger(dir.path()),
        [
            "book car",
            "book hotel",
            "book flight",
            "pay",
            "undo flight",
            "undo hotel"
        ]
    );
    match engine.status("t-2").await.unwrap() {
        Status::Failed { reason } => {
            assert!(
                reason.contains("compensation of step \"hotel\""),
                "{reason}"
            )
        }
        other => panic!("not failed: {other:?}"),
    }
    let history = engine.history("t-2").await.unwrap();
    assert!(
        kinds(&history).iter().any(|k| matches!(
            k,
            TransitionKind::CompensationFailed { step, .. } if step == "hotel"
        )),
        "{:?}",
        history.transitions
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_cancel_compensates_the_completed_steps_then_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let trip_in = Trip {
        wait: true,
        ..input(dir.path())
    };
    let handle = engine.start(trip, "t-3", trip_in).await.unwrap();
    // Every booking checkpointed (a step still running at the cancel
    // finishes, but its checkpoint is refused: it is not compensated).
    support::wait_until("the trip waits for go", async || {
        let history = engine.history("t-3").await.unwrap();
        let done = history.steps.iter().filter(|s| s.finished_at.is_some());
        if done.count() == 3 {
            Ok(())
        } else {
            Err(history.steps)
        }
    })
    .await;
    engine.cancel("t-3").await.unwrap();
    support::assert_cancelled(handle.result()).await;
    assert_eq!(
        support::read_ledger(dir.path()),
        [
            "book car",
            "book hotel",
            "book flight",
            "undo flight",
            "undo hotel",
            "undo car"
        ]
    );
    assert_eq!(engine.status("t-3").await.unwrap(), Status::Cancelled);
    support::assert_compensated_then_cancelled(&engine.history("t-3").await.unwrap(), 3);
    // A second cancel finds it finished.
    assert!(engine.cancel("t-3").await.is_err());
    engine.shutdown().await;
}

/// The child of the crash test: runs a trip that fails and compensates,
/// and hangs in the hotel's undo until it is killed.
#[tokio::test]
async fn saga_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let engine = open(&dir).await;
    let _ = engine.run(trip, "t-kill", input(&dir)).await;
    unreachable!("the hotel's undo never ends in the child");
}

#[tokio::test]
async fn a_kill_in_the_middle_of_compensating_resumes_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = support::test_process("saga_child")
        .env(CHILD_ENV, dir.path())
        .spawn()
        .unwrap();
    support::wait_until("the child undoes the hotel", async || {
        let ledger = support::read_ledger(dir.path());
        if ledger.iter().any(|l| l == "undo hotel") {
            Ok(())
        } else if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended first: {status}");
        } else {
            Err(ledger)
        }
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let engine = open(dir.path()).await;
    let handle = engine.attach(trip, "t-kill").await.unwrap();
    let out = support::guarded("the resumed trip ends", handle.result())
        .await
        .unwrap();
    assert_eq!(out, Err("card declined".to_string()));
    // The flight's undo had finished: it never ran again. The hotel's was
    // cut off before its checkpoint: it ran again, then the car's.
    assert_eq!(
        support::read_ledger(dir.path()),
        [
            "book car",
            "book hotel",
            "book flight",
            "pay",
            "undo flight",
            "undo hotel",
            "undo hotel",
            "undo car"
        ]
    );
    engine.shutdown().await;
}

/// While set, the "slow" step of `gated_trip` does not return.
static GATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[durable]
async fn gated_trip(_ctx: &Ctx, trip: Trip) -> Result<(), String> {
    step!(
        "car",
        async { book(&trip, "car") }.await,
        compensate = |b: Booking| cancel_booking(b)
    )?;
    step!(
        "slow",
        retry = RetryPolicy::no_retry(),
        async {
            let booked = book(&trip, "room");
            while GATE.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            if trip.failing_undo.is_some() {
                panic!("the slow step breaks");
            }
            booked
        }
        .await,
        compensate = |b: Booking| cancel_booking(b)
    )?;
    step!("never", async { book(&trip, "never") }.await)?;
    Ok(())
}

/// A cancel while a compensable step runs in this very process: the step
/// finishes and is checkpointed, so it is compensated with the one before
/// it, in reverse order, and no later step starts. Then a step that panics
/// on its last attempt fails the instance for good, which compensates the
/// steps that succeeded (not the one that panicked).
#[tokio::test]
async fn a_cancel_during_a_step_and_a_panicking_step_compensate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .path(dir.path().join("store"))
        .register(gated_trip)
        .open()
        .await
        .unwrap();
    let handle = engine
        .start(gated_trip, "g-1", input(dir.path()))
        .await
        .unwrap();
    support::wait_for_ledger(dir.path(), 2).await;
    engine.cancel("g-1").await.unwrap();
    GATE.store(false, std::sync::atomic::Ordering::SeqCst);
    support::assert_cancelled(handle.result()).await;
    assert_eq!(
        support::read_ledger(dir.path()),
        ["book car", "book room", "undo room", "undo car"]
    );
    assert_eq!(engine.status("g-1").await.unwrap(), Status::Cancelled);
    // The request, recorded while the run went on, stays in the history
    // the run's own writes end.
    support::assert_compensated_then_cancelled(&engine.history("g-1").await.unwrap(), 2);

    // A panic on the last attempt: the instance fails, compensated.
    let dir2 = tempfile::tempdir().unwrap();
    let trip_in = Trip {
        failing_undo: Some("none".into()),
        ..input(dir2.path())
    };
    let err = support::guarded("g-2 ends", engine.run(gated_trip, "g-2", trip_in))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Instance(InstanceError::StepPanicked { .. })),
        "{err:?}"
    );
    assert_eq!(
        support::read_ledger(dir2.path()),
        ["book car", "book room", "undo car"]
    );
    engine.shutdown().await;
}
