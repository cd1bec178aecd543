//! Saga compensation on PostgreSQL: a workflow that fails compensates its
//! completed steps in reverse order, and an instance started on one engine
//! and cancelled from another (each its own worker, sharing only the
//! schema) compensates each completed step exactly once, then ends
//! cancelled, with the handle on the first engine resolving. A cancel while
//! a step runs in the same engine keeps its request in the history the
//! run's own writes end.
//!
//! `cargo test --features postgres --test pg_saga`. Needs PostgreSQL
//! (`DURABLE_TEST_PG`); without it the tests pass after saying "skipped: no
//! PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

mod support;

use durable::Status;
use durable::prelude::*;
use serde::{Deserialize, Serialize};

use support::pg::Schema;

/// What a trip books; the ledger of `dir` records every body run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trip {
    dir: String,
    wait: bool,
}

/// A booking, as its step returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Booking {
    dir: String,
    what: String,
}

fn book(trip: &Trip, what: &str) -> Result<Booking, String> {
    support::ledger_in(&trip.dir, &format!("book {what}"));
    Ok(Booking {
        dir: trip.dir.clone(),
        what: what.to_string(),
    })
}

async fn cancel_booking(b: Booking) -> Result<(), String> {
    support::ledger_in(&b.dir, &format!("undo {}", b.what));
    Ok(())
}

#[durable]
async fn pg_trip(_ctx: &Ctx, trip: Trip) -> Result<String, String> {
    let car = step!(
        "car",
        async { book(&trip, "car") }.await,
        compensate = |b: Booking| cancel_booking(b)
    )?;
    let hotel = step!(
        "hotel",
        async { book(&trip, "hotel") }.await,
        compensate = |b: Booking| cancel_booking(b)
    )?;
    if trip.wait {
        let _go: String = wait_for!("go");
    }
    step!(
        "pay",
        async { Err::<(), String>(durable::permanent("card declined".to_string())) }.await
    )?;
    Ok(format!("{} {}", car.what, hotel.what))
}

fn trip_in(dir: &std::path::Path, wait: bool) -> Trip {
    Trip {
        dir: dir.to_string_lossy().into_owned(),
        wait,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_workflow_compensates_in_reverse() {
    let Some(schema) = Schema::new("durable_saga").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = schema.builder().register(pg_trip).open().await.unwrap();
    let out = support::guarded(
        "the trip ends",
        engine.run(pg_trip, "s-1", trip_in(dir.path(), false)),
    )
    .await
    .unwrap();
    assert_eq!(out, Err("card declined".to_string()));
    assert_eq!(
        support::read_ledger(dir.path()),
        ["book car", "book hotel", "undo hotel", "undo car"]
    );
    engine.shutdown().await;
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_engine_compensates_once() {
    let Some(schema) = Schema::new("durable_saga").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let first = schema.builder().register(pg_trip).open().await.unwrap();
    let second = schema.builder().register(pg_trip).open().await.unwrap();
    let handle = first
        .start(pg_trip, "s-2", trip_in(dir.path(), true))
        .await
        .unwrap();
    // Every booking checkpointed (a step still running at the cancel
    // finishes, but its checkpoint is refused: it is not compensated).
    support::wait_until("the trip waits for go", async || {
        let history = second.history("s-2").await.unwrap();
        let done = history.steps.iter().filter(|s| s.finished_at.is_some());
        if done.count() == 2 {
            Ok(())
        } else {
            Err(history.steps)
        }
    })
    .await;
    second.cancel("s-2").await.unwrap();
    support::assert_cancelled(handle.result()).await;
    assert_eq!(second.status("s-2").await.unwrap(), Status::Cancelled);
    assert_eq!(
        support::read_ledger(dir.path()),
        ["book car", "book hotel", "undo hotel", "undo car"]
    );
    first.shutdown().await;
    second.shutdown().await;
    schema.drop_schema().await;
}

/// While set, the "slow" step of `gated_pg_trip` does not return.
static GATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[durable]
async fn gated_pg_trip(_ctx: &Ctx, trip: Trip) -> Result<(), String> {
    step!(
        "car",
        async { book(&trip, "car") }.await,
        compensate = |b: Booking| cancel_booking(b)
    )?;
    step!(
        "slow",
        async {
            let booked = book(&trip, "room");
            while GATE.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            booked
        }
        .await,
        compensate = |b: Booking| cancel_booking(b)
    )?;
    step!("never", async { book(&trip, "never") }.await)?;
    Ok(())
}

/// A cancel of an instance whose step runs in this engine: the request is
/// recorded while the run goes on; the run compensates and ends cancelled,
/// and its writes keep the request in the history (they append to the
/// stored transitions, read under the row's lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_a_step_stays_in_the_history() {
    let Some(schema) = Schema::new("durable_saga").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = schema
        .builder()
        .register(gated_pg_trip)
        .open()
        .await
        .unwrap();
    let handle = engine
        .start(gated_pg_trip, "s-3", trip_in(dir.path(), false))
        .await
        .unwrap();
    support::wait_for_ledger(dir.path(), 2).await;
    engine.cancel("s-3").await.unwrap();
    GATE.store(false, std::sync::atomic::Ordering::SeqCst);
    support::assert_cancelled(handle.result()).await;
    assert_eq!(
        support::read_ledger(dir.path()),
        ["book car", "book room", "undo room", "undo car"]
    );
    support::assert_compensated_then_cancelled(&engine.history("s-3").await.unwrap(), 2);
    engine.shutdown().await;
    schema.drop_schema().await;
}
