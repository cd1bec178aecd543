//! A store with instances in every status, for the command-line and admin
//! page tests: completed (ok and Err), failed, blocked, needs-attention,
//! cancelled, sleeping, waiting and running.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use durable::prelude::*;
use durable::{Status, StatusKind};
use serde::{Deserialize, Serialize};

/// An order's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub sku: String,
    pub cents: u64,
}

/// The approval event's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub approved: bool,
    pub by: String,
}

/// Held by each test of a binary that uses the fixture for its whole run:
/// [`BROKEN`] is one flag for every store in the process, so tests that
/// build stores and run instances take turns.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// While set, `Receipt` refuses to serialize: the step's checkpoint cannot
/// be written and the instance is blocked (resumable once it is cleared).
pub static BROKEN: AtomicBool = AtomicBool::new(false);

/// Instances whose "explode" step no longer panics (the fire is out), by
/// id: a test adds the id of a failed instance before it retries it.
pub static EXTINGUISHED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Puts out the fire of instance `id`: its "explode" step succeeds from now on.
pub fn extinguish(id: &str) {
    EXTINGUISHED.lock().unwrap().push(id.to_string());
}

fn on_fire(id: &str) -> bool {
    !EXTINGUISHED.lock().unwrap().iter().any(|x| x == id)
}

/// A step value that can fail to serialize.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Receipt(pub u64);

impl Serialize for Receipt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if BROKEN.load(Ordering::SeqCst) {
            return Err(serde::ser::Error::custom(
                "the receipt printer is out of paper",
            ));
        }
        s.serialize_newtype_struct("Receipt", &self.0)
    }
}

#[durable(retry = RetryPolicy::no_retry())]
pub async fn order(ctx: &Ctx, order: Order) -> Result<String, String> {
    let total = step!(
        "price",
        async { Ok::<u64, String>(order.cents + 100) }.await
    )?;
    if order.sku == "refuse" {
        return Err(format!("refused at {total}"));
    }
    if order.sku == "panic" {
        let burning = on_fire(ctx.id());
        step!(
            "explode",
            async {
                if burning && order.cents > 0 {
                    panic!("the warehouse is on fire");
                }
                Ok::<(), String>(())
            }
            .await
        )?;
    }
    if order.sku == "hang" {
        step!(
            "hang",
            async {
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            }
            .await
        )?;
    }
    if order.sku == "sleep" {
        sleep!("cool-off", Duration::from_secs(86_400));
    }
    let mut approver = String::from("auto");
    if order.sku == "wait" {
        let approval: Approval = wait_for!("approval");
        if !approval.approved {
            return Err(format!("rejected by {}", approval.by));
        }
        approver = approval.by;
    }
    let receipt = step!(
        "charge",
        async { Ok::<Receipt, String>(Receipt(total)) }.await
    )?;
    Ok(format!("charged {} approved by {approver}", receipt.0))
}

/// The ids of the fixture, by the status each ends in.
pub const COMPLETED: &str = "order-ok";
pub const COMPLETED_ERR: &str = "order-refused";
pub const FAILED: &str = "order-panics";
pub const BLOCKED: &str = "order-blocked";
pub const NEEDS_ATTENTION: &str = "order-crashing";
pub const CANCELLED: &str = "order-cancelled";
pub const SLEEPING: &str = "order-sleeping";
pub const WAITING: &str = "order-waiting";
pub const RUNNING: &str = "order-running";

/// Every id with its status kind.
pub const ALL: [(&str, &str); 9] = [
    (COMPLETED, "completed"),
    (COMPLETED_ERR, "completed"),
    (FAILED, "failed"),
    (BLOCKED, "blocked"),
    (NEEDS_ATTENTION, "needs-attention"),
    (CANCELLED, "cancelled"),
    (SLEEPING, "sleeping"),
    (WAITING, "waiting"),
    (RUNNING, "running"),
];

fn input(sku: &str) -> Order {
    Order {
        sku: sku.into(),
        cents: 1250,
    }
}

/// Waits (minutes at most: a hang guard, not a timing assertion) until
/// instance `id` has status `kind`.
pub async fn until_status(engine: &Engine, id: &str, kind: StatusKind) -> Status {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = engine.status(id).await.expect("status");
        if status.kind() == kind {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: still {status:?}, expected {kind:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until instance `id` runs a step attempt (in this process).
pub async fn until_in_step(engine: &Engine, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Status::Running { steps } = engine.status(id).await.expect("status")
            && !steps.is_empty()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id}: never ran a step");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn builder(dir: &Path) -> durable::EngineBuilder {
    Engine::builder().path(dir).register(order)
}

/// Builds the store at `dir` and returns its engine, still open: the
/// running instance runs a step now. Close it (`shutdown`) to leave the
/// running instance interrupted, as a crash would.
pub async fn build(dir: &Path) -> Engine {
    BROKEN.store(false, Ordering::SeqCst);
    // First life: an instance interrupted in a step, to be set aside at the
    // next open (max_recoveries 0); the finished ones; a cancelled one.
    let engine = builder(dir).open().await.expect("open");
    let _ = engine
        .start(order, NEEDS_ATTENTION, input("hang"))
        .await
        .unwrap();
    until_in_step(&engine, NEEDS_ATTENTION).await;
    engine
        .run(order, COMPLETED, input("ok"))
        .await
        .unwrap()
        .unwrap();
    let refused = engine
        .run(order, COMPLETED_ERR, input("refuse"))
        .await
        .unwrap();
    assert!(refused.is_err());
    assert!(engine.run(order, FAILED, input("panic")).await.is_err());
    let _ = engine.start(order, CANCELLED, input("wait")).await.unwrap();
    until_status(&engine, CANCELLED, StatusKind::Waiting).await;
    engine.cancel(CANCELLED).await.unwrap();
    engine.shutdown().await;

    // Second life: no resume without progress allowed, so the interrupted
    // instance is set aside.
    let engine = builder(dir).max_recoveries(0).open().await.expect("reopen");
    until_status(&engine, NEEDS_ATTENTION, StatusKind::NeedsAttention).await;
    engine.shutdown().await;

    // Third life: a parked sleep and wait, a blocked one, a running one.
    let engine = builder(dir).open().await.expect("reopen");
    let _ = engine.start(order, SLEEPING, input("sleep")).await.unwrap();
    let _ = engine.start(order, WAITING, input("wait")).await.unwrap();
    until_status(&engine, SLEEPING, StatusKind::Sleeping).await;
    until_status(&engine, WAITING, StatusKind::Waiting).await;
    BROKEN.store(true, Ordering::SeqCst);
    assert!(engine.run(order, BLOCKED, input("ok")).await.is_err());
    until_status(&engine, BLOCKED, StatusKind::Blocked).await;
    let _ = engine.start(order, RUNNING, input("hang")).await.unwrap();
    until_in_step(&engine, RUNNING).await;
    engine
}
