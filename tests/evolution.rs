//! Guards safe workflow evolution: a deploy of changed code never re-runs a
//! side effect of an in-flight instance and never misreads a checkpoint or
//! an event. Each test is one of the cases that broke before manifests and
//! fingerprints, with the message the user sees.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use durable::prelude::*;
use durable::{EngineBuilder, StoreError};
use durable::{Status, StepOutcome};
use serde::{Deserialize, Serialize};

/// Step bodies that ran, as "instance/step".
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn effect(ctx: &Ctx, step: &str) {
    LOG.lock().unwrap().push(format!("{}/{step}", ctx.id()));
}

fn ran(entry: &str) -> usize {
    LOG.lock().unwrap().iter().filter(|e| *e == entry).count()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn status_becomes(engine: &Engine, id: &str, what: &str, f: impl Fn(&Status) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = engine.status(id).await.unwrap();
        if f(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {id} is {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Approval {
    approved: bool,
}

mod v1 {
    use super::*;

    #[durable(name = "onboard")]
    pub async fn onboard(ctx: &Ctx, user: String) -> Result<String, String> {
        step!("charge", {
            effect(ctx, "charge");
            Ok::<u64, String>(42)
        })?;
        let team = step!("assign-team", {
            effect(ctx, "assign-team");
            Ok::<String, String>(format!("team-of-{user}"))
        })?;
        let approval: Approval = wait_for!("approval");
        step!("send-welcome", {
            effect(ctx, "send-welcome");
            Ok::<(), String>(())
        })?;
        Ok(format!("{team} approved={}", approval.approved))
    }
}

mod v2 {
    use super::*;

    #[durable(name = "onboard")]
    pub async fn onboard(ctx: &Ctx, user: String) -> Result<String, String> {
        step!("charge", {
            effect(ctx, "charge");
            Ok::<u64, String>(42)
        })?;
        step!("fraud-check", {
            effect(ctx, "fraud-check");
            Ok::<(), String>(())
        })?;
        let team = step!("assign-squad", {
            effect(ctx, "assign-squad");
            Ok::<String, String>(format!("squad-of-{user}"))
        })?;
        let approval: Approval = wait_for!("approval");
        step!("send-welcome", {
            effect(ctx, "send-welcome");
            Ok::<(), String>(())
        })?;
        Ok(format!("{team} approved={}", approval.approved))
    }
}

async fn open(dir: &Path, register: impl FnOnce(EngineBuilder) -> EngineBuilder) -> Engine {
    register(Engine::builder().path(dir.join("store")))
        .open()
        .await
        .unwrap()
}

/// Case 1: v2 adds `fraud-check` and renames `assign-team`. Before, the
/// deploy re-ran side effects and then blocked the instance for good.
#[tokio::test]
async fn a_changed_workflow_is_refused_before_any_body_runs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(v1::onboard)).await;
    let _handle = engine
        .start(v1::onboard, "c1", "ann".to_string())
        .await
        .unwrap();
    status_becomes(&engine, "c1", "the wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    engine.shutdown().await;

    // Deploy v2; the approval arrives.
    let engine = open(dir.path(), |b| b.register(v2::onboard)).await;
    let gate = engine.compatibility().await.unwrap();
    assert_eq!(gate.len(), 1, "{gate:?}");
    assert_eq!(gate[0].instance.as_deref(), Some("c1"));
    assert_eq!(gate[0].reason, "step `assign-team` is gone");
    engine
        .send_event("c1", "approval", Approval { approved: true })
        .await
        .unwrap();
    status_becomes(&engine, "c1", "set aside", |s| {
        matches!(s, Status::Incompatible { .. })
    })
    .await;
    let Status::Incompatible { reason } = engine.status("c1").await.unwrap() else {
        unreachable!()
    };
    assert_eq!(reason, "step `assign-team` is gone");
    let err = engine
        .attach(v2::onboard, "c1")
        .await
        .unwrap()
        .result()
        .await;
    let message = err.unwrap_err().to_string();
    assert_eq!(
        message,
        "instance \"c1\" of workflow \"onboard\" cannot run on this code, nothing ran: \
         step `assign-team` is gone; finish it with the build that started it, or register \
         that version side by side"
    );
    for step in ["fraud-check", "assign-squad", "send-welcome"] {
        assert_eq!(ran(&format!("c1/{step}")), 0, "{step} ran");
    }
    engine.shutdown().await;

    // The code that started it can still finish it, once each.
    let engine = open(dir.path(), |b| b.register(v1::onboard)).await;
    let out = engine
        .attach(v1::onboard, "c1")
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(out, Ok("team-of-ann approved=true".to_string()));
    assert_eq!(ran("c1/charge"), 1);
    assert_eq!(ran("c1/assign-team"), 1);
    assert_eq!(ran("c1/send-welcome"), 1);
    assert_eq!(ran("c1/fraud-check"), 0);
    engine.shutdown().await;
}

mod price_v1 {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Price {
        pub cents: u64,
        pub tax_cents: u64,
    }
}

mod price_v2 {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Price {
        pub tax_cents: u64,
        pub cents: u64,
    }
}

mod typed_v1 {
    use super::*;

    #[durable(name = "typed")]
    pub async fn typed(ctx: &Ctx, _n: u32) -> Result<String, String> {
        let amount = step!("amount", {
            effect(ctx, "amount");
            Ok::<u64, String>(1014)
        })?;
        let price = step!("price", {
            effect(ctx, "price");
            Ok::<price_v1::Price, String>(price_v1::Price {
                cents: 1000,
                tax_cents: 14,
            })
        })?;
        let () = wait_for!("go");
        Ok(format!("{amount} {} {}", price.cents, price.tax_cents))
    }
}

mod typed_v2 {
    use super::*;

    #[durable(name = "typed")]
    pub async fn typed(ctx: &Ctx, _n: u32) -> Result<String, String> {
        let amount = step!("amount", {
            effect(ctx, "amount");
            Ok::<i64, String>(1014)
        })?;
        let price = step!("price", {
            effect(ctx, "price");
            Ok::<price_v2::Price, String>(price_v2::Price {
                cents: 1000,
                tax_cents: 14,
            })
        })?;
        let () = wait_for!("go");
        Ok(format!("{amount} {} {}", price.cents, price.tax_cents))
    }
}

/// Case 2: `u64` read back as `i64` (507 instead of 1014) and a struct
/// with reordered fields (values swapped), silently, before.
#[tokio::test]
async fn a_changed_type_is_never_decoded_into_a_wrong_value() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(typed_v1::typed)).await;
    let _handle = engine.start(typed_v1::typed, "t1", 1).await.unwrap();
    status_becomes(&engine, "t1", "the wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    engine.shutdown().await;

    let engine = open(dir.path(), |b| b.register(typed_v2::typed)).await;
    engine.send_event("t1", "go", ()).await.unwrap();
    status_becomes(&engine, "t1", "set aside", |s| {
        matches!(s, Status::Incompatible { .. })
    })
    .await;
    let Status::Incompatible { reason } = engine.status("t1").await.unwrap() else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "step `amount` was written as `u64`, the code now reads `i64`; \
         step `price` was written as `{cents: u64, tax_cents: u64}`, \
         the code now reads `{tax_cents: u64, cents: u64}`"
    );
    engine.shutdown().await;

    let engine = open(dir.path(), |b| b.register(typed_v1::typed)).await;
    let out = engine
        .attach(typed_v1::typed, "t1")
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(out, Ok("1014 1000 14".to_string()));
    assert_eq!(ran("t1/amount"), 1);
    assert_eq!(ran("t1/price"), 1);
    engine.shutdown().await;
}

static RELEASE: AtomicBool = AtomicBool::new(false);

#[durable]
async fn gated(ctx: &Ctx, _n: u32) -> Result<bool, String> {
    step!("slow", {
        effect(ctx, "slow");
        while !RELEASE.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok::<(), String>(())
    })?;
    let approval: Approval = wait_for!("approval");
    Ok(approval.approved)
}

/// Case 3: a wrongly typed event sent before the wait was accepted and then
/// blocked the instance forever.
#[tokio::test]
async fn a_wrongly_typed_event_is_refused_when_sent_even_before_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(gated)).await;
    let handle = engine.start(gated, "e1", 1).await.unwrap();
    wait_until("the slow step", || ran("e1/slow") == 1).await;
    let err = engine.send_event("e1", "approval", 7u32).await.unwrap_err();
    assert!(
        matches!(err, Error::Usage(UsageError::EventTypeMismatch { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "instance \"e1\": event \"approval\" takes a payload shaped `{approved: bool}`, \
         not `u32`; nothing was delivered"
    );
    engine
        .send_event("e1", "approval", Approval { approved: true })
        .await
        .unwrap();
    RELEASE.store(true, Ordering::SeqCst);
    assert_eq!(handle.result().await.unwrap(), Ok(true));
    engine.shutdown().await;
}

mod moved {
    /// `Approval`, moved to another module: same fields, same bytes.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Approval {
        pub approved: bool,
    }
}

/// Case 4: event identity was `std::any::type_name`, so moving the payload
/// type to another module made every waiting instance refuse it.
#[tokio::test]
async fn moving_a_payload_type_to_another_module_keeps_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(gated)).await;
    RELEASE.store(true, Ordering::SeqCst);
    let handle = engine.start(gated, "m1", 1).await.unwrap();
    status_becomes(&engine, "m1", "the wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    engine
        .send_event("m1", "approval", moved::Approval { approved: true })
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap(), Ok(true));
    engine.shutdown().await;
}

static HOLD_AFTER: Mutex<Option<usize>> = Mutex::new(None);

async fn grant(ctx: &Ctx, perm: &str) -> Result<String, String> {
    let granted = {
        let mut log = LOG.lock().unwrap();
        log.push(format!("{}/grant:{perm}", ctx.id()));
        let prefix = format!("{}/grant:", ctx.id());
        log.iter().filter(|e| e.starts_with(&prefix)).count()
    };
    let hold = *HOLD_AFTER.lock().unwrap();
    if hold.is_some_and(|n| granted > n) {
        // "Crash" in the middle of the loop: never finish.
        std::future::pending::<()>().await;
    }
    Ok(format!("granted {perm}"))
}

#[durable]
async fn permissions(ctx: &Ctx, perms: Vec<String>) -> Result<Vec<(String, String)>, String> {
    let set: HashSet<String> = perms.into_iter().collect();
    let mut out = Vec::new();
    for perm in &set {
        let result = step!("grant", key = perm.clone(), grant(ctx, perm).await)?;
        out.push((perm.clone(), result));
    }
    out.sort();
    Ok(out)
}

/// Case 5: steps issued while iterating a `HashSet` were matched by
/// position after a restart: one permission granted twice, another never.
#[tokio::test]
async fn keyed_steps_in_an_unordered_loop_replay_each_items_own_outcome() {
    let perms: Vec<String> = (0..12).map(|i| format!("perm-{i}")).collect();
    for trial in 0..4 {
        let id = format!("p{trial}");
        let dir = tempfile::tempdir().unwrap();
        *HOLD_AFTER.lock().unwrap() = Some(5);
        let engine = open(dir.path(), |b| b.register(permissions)).await;
        let _handle = engine.start(permissions, &id, perms.clone()).await.unwrap();
        let prefix = format!("{id}/grant:");
        let count = || {
            LOG.lock()
                .unwrap()
                .iter()
                .filter(|e| e.starts_with(&prefix))
                .count()
        };
        wait_until("six grants", || count() == 6).await;
        engine.shutdown().await;

        // A new process iterates the set in another order.
        *HOLD_AFTER.lock().unwrap() = None;
        let engine = open(dir.path(), |b| b.register(permissions)).await;
        let out = engine
            .attach(permissions, &id)
            .await
            .unwrap()
            .result()
            .await
            .unwrap()
            .unwrap();
        let expected: Vec<(String, String)> = {
            let mut v: Vec<_> = perms
                .iter()
                .map(|p| (p.clone(), format!("granted {p}")))
                .collect();
            v.sort();
            v
        };
        assert_eq!(out, expected);
        // Each permission granted once, except the one in flight at the
        // "crash", which may run again.
        let mut runs: BTreeMap<String, usize> = BTreeMap::new();
        for e in LOG
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with(&prefix))
        {
            *runs.entry(e.clone()).or_default() += 1;
        }
        assert_eq!(runs.len(), perms.len(), "{runs:?}");
        assert_eq!(runs.values().filter(|&&n| n > 1).count(), 1, "{runs:?}");
        let history = engine.history(&id).await.unwrap();
        let mut keys: Vec<String> = history.steps.iter().filter_map(|s| s.key.clone()).collect();
        keys.sort();
        let mut want: Vec<String> = perms.iter().map(|p| format!("{p:?}")).collect();
        want.sort();
        assert_eq!(keys, want);
        engine.shutdown().await;
    }
}

#[durable]
async fn twice(_ctx: &Ctx, _n: u32) -> Result<(), String> {
    for _ in 0..2 {
        step!("grant", key = "same", Ok::<(), String>(()))?;
    }
    Ok(())
}

/// Two uses of one key in one instance are a clear error.
#[tokio::test]
async fn a_duplicate_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(twice)).await;
    let err = engine.run(twice, "d1", 1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "instance \"d1\": step \"grant\" was called twice with key \"same\"; \
         a key names one step of an instance"
    );
    assert!(matches!(
        engine.status("d1").await.unwrap(),
        Status::Failed { .. }
    ));
    engine.shutdown().await;
}

#[durable]
async fn big(ctx: &Ctx, _n: u32) -> Result<usize, String> {
    let bytes = step!("download", {
        effect(ctx, "download");
        Ok::<Vec<u8>, String>(vec![7; 2 << 20])
    })?;
    Ok(bytes.len())
}

/// Case 6: an outcome over `max_value_size` re-ran its side effect at every
/// open and was then parked as a crash loop.
#[tokio::test]
async fn an_outcome_over_the_limit_is_a_recorded_failure() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(big)).await;
    let err = engine.run(big, "b1", 1).await.unwrap_err();
    let expected = "instance \"b1\": the outcome of step \"download\" (occurrence 0) is \
                    2097159 bytes, over the 1048576-byte limit; raise `max_value_size` or \
                    store the data elsewhere and checkpoint a reference";
    assert_eq!(err.to_string(), expected);
    engine.shutdown().await;
    for _ in 0..3 {
        let engine = open(dir.path(), |b| b.register(big)).await;
        let Status::Failed { reason } = engine.status("b1").await.unwrap() else {
            panic!("{:?}", engine.status("b1").await);
        };
        assert_eq!(reason, expected);
        let history = engine.history("b1").await.unwrap();
        assert_eq!(
            history.steps[0].outcome,
            StepOutcome::TooLarge {
                size: 2097159,
                limit: 1 << 20
            }
        );
        engine.shutdown().await;
    }
    assert_eq!(ran("b1/download"), 1);
}

#[durable]
async fn nested(ctx: &Ctx, _n: u32) -> Result<u32, String> {
    let n = step!(
        "outer",
        async {
            effect(ctx, "outer");
            ctx.step("inner", || async {
                effect(ctx, "inner");
                Ok::<u32, String>(5)
            })
            .await
        }
        .await
    )?;
    let () = wait_for!("go");
    Ok(n)
}

/// Case 7: a step called inside another step's body was recorded as a step
/// of its own and the replay then blocked with `Nondeterminism`. It is a
/// plain call of the outer body now.
#[tokio::test]
async fn a_step_inside_a_step_is_a_plain_call() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(nested)).await;
    let _handle = engine.start(nested, "n1", 1).await.unwrap();
    status_becomes(&engine, "n1", "the wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    engine.shutdown().await;
    let engine = open(dir.path(), |b| b.register(nested)).await;
    engine.send_event("n1", "go", ()).await.unwrap();
    let out = engine
        .attach(nested, "n1")
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(out, Ok(5));
    assert_eq!(ran("n1/outer"), 1);
    assert_eq!(ran("n1/inner"), 1);
    let names: Vec<String> = engine
        .history("n1")
        .await
        .unwrap()
        .steps
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["outer", "go"]);
    engine.shutdown().await;
}

#[durable]
async fn joined(_ctx: &Ctx, _n: u32) -> Result<(), String> {
    let (a, b, c) = tokio::join!(
        step!(
            "a",
            async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<(), String>(())
            }
            .await
        ),
        step!("b", Ok::<(), String>(())),
        step!("c", Ok::<(), String>(())),
    );
    a?;
    b?;
    c?;
    Ok(())
}

/// `History::steps` lists steps in the order they started, also when
/// `join!` started them together (it listed b, c, a before).
#[tokio::test]
async fn history_lists_joined_steps_in_start_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(joined)).await;
    engine.run(joined, "j1", 1).await.unwrap().unwrap();
    let names: Vec<String> = engine
        .history("j1")
        .await
        .unwrap()
        .steps
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    engine.shutdown().await;
}

#[durable(retry = RetryPolicy::no_retry())]
async fn doomed(_ctx: &Ctx, _n: u32) -> Result<(), String> {
    step!("boom", {
        if true {
            panic!("no");
        }
        Ok::<(), String>(())
    })?;
    Ok(())
}

/// `resume` on a failed instance is an error, never `Ok` doing nothing.
#[tokio::test]
async fn resuming_a_failed_instance_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(doomed)).await;
    assert!(engine.run(doomed, "f1", 1).await.is_err());
    let err = engine.resume(doomed, "f1").await.unwrap_err();
    assert!(
        matches!(err, Error::Instance(InstanceError::Failed { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("a failed instance cannot be resumed, start a new one"),
        "{err}"
    );
    engine.shutdown().await;
}

/// A store written by the previous format (1) is refused with both
/// versions named, and nothing in it is read.
#[tokio::test]
async fn a_store_of_the_previous_format_is_refused() {
    use durable::store::{Batch, SledStore, Store, Tree};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let engine = open(dir.path(), |b| b.register(gated)).await;
    engine.shutdown().await;
    {
        let store = SledStore::open(&path).unwrap();
        let mut batch = Batch::new();
        batch.put(
            Tree::Meta,
            b"format_version".to_vec(),
            1u32.to_be_bytes().to_vec(),
        );
        store.apply(&[batch]).unwrap();
    }
    let err = Engine::builder()
        .path(&path)
        .register(gated)
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Store(StoreError::FormatTooOld {
                found: 1,
                supported: 2
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "store format version 1 was written by an older durable; this build reads format \
         version 2 only and does not convert stores: finish its instances with the build that \
         wrote it, or open a new store"
    );
}

mod v2_versioned {
    use super::*;

    /// `v2::onboard` as version 2, registered beside version 1.
    #[durable(name = "onboard", version = 2)]
    pub async fn onboard(ctx: &Ctx, user: String) -> Result<String, String> {
        step!("charge", {
            effect(ctx, "charge");
            Ok::<u64, String>(42)
        })?;
        step!("fraud-check", {
            effect(ctx, "fraud-check");
            Ok::<(), String>(())
        })?;
        let team = step!("assign-squad", {
            effect(ctx, "assign-squad");
            Ok::<String, String>(format!("squad-of-{user}"))
        })?;
        let approval: Approval = wait_for!("approval");
        step!("send-welcome", {
            effect(ctx, "send-welcome");
            Ok::<(), String>(())
        })?;
        Ok(format!("{team} approved={}", approval.approved))
    }
}

/// Versions side by side: in-flight instances finish on the version they
/// started on, new ones start on the new version; the gate is clear.
#[tokio::test]
async fn versions_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(v1::onboard)).await;
    let _handle = engine
        .start(v1::onboard, "s1", "sam".to_string())
        .await
        .unwrap();
    status_becomes(&engine, "s1", "the wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    engine.shutdown().await;

    let engine = open(dir.path(), |b| {
        b.register(v1::onboard).register(v2_versioned::onboard)
    })
    .await;
    assert_eq!(engine.compatibility().await.unwrap(), []);
    engine
        .send_event("s1", "approval", Approval { approved: true })
        .await
        .unwrap();
    let old = engine.attach(v2_versioned::onboard, "s1").await.unwrap();
    let new = engine
        .start(v2_versioned::onboard, "s2", "sue".to_string())
        .await
        .unwrap();
    engine
        .send_event("s2", "approval", Approval { approved: false })
        .await
        .unwrap();
    assert_eq!(
        old.result().await.unwrap(),
        Ok("team-of-sam approved=true".to_string())
    );
    assert_eq!(
        new.result().await.unwrap(),
        Ok("squad-of-sue approved=false".to_string())
    );
    assert_eq!(ran("s1/fraud-check") + ran("s1/assign-squad"), 0);
    assert_eq!(ran("s1/send-welcome"), 1);
    assert_eq!(ran("s2/fraud-check"), 1);
    assert_eq!(ran("s2/assign-team"), 0);
    engine.shutdown().await;

    // An instance whose version is not registered is left alone and reported.
    let engine = open(dir.path(), |b| b.register(v2_versioned::onboard)).await;
    let _handle = engine
        .start(v2_versioned::onboard, "s3", "zoe".to_string())
        .await
        .unwrap();
    status_becomes(&engine, "s3", "the wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    engine.shutdown().await;
    let engine = open(dir.path(), |b| b.register(v1::onboard)).await;
    let reason =
        "workflow \"onboard\" version 2 is not registered (this build registers version 1)";
    assert_eq!(
        engine.recovery().skipped,
        [("s3".to_string(), reason.to_string())]
    );
    let gate = engine.compatibility().await.unwrap();
    assert_eq!(gate.len(), 1);
    assert_eq!(gate[0].reason, reason);
    engine.shutdown().await;
}

mod inserted {
    use super::*;

    /// v1 with `fraud-check` inserted before `assign-team`, unguarded.
    #[durable(name = "onboard")]
    pub async fn onboard(ctx: &Ctx, user: String) -> Result<String, String> {
        step!("charge", {
            effect(ctx, "charge");
            Ok::<u64, String>(42)
        })?;
        step!("fraud-check", {
            effect(ctx, "fraud-check");
            Ok::<(), String>(())
        })?;
        let team = step!("assign-team", {
            effect(ctx, "assign-team");
            Ok::<String, String>(format!("team-of-{user}"))
        })?;
        let approval: Approval = wait_for!("approval");
        step!("send-welcome", {
            effect(ctx, "send-welcome");
            Ok::<(), String>(())
        })?;
        Ok(format!("{team} approved={}", approval.approved))
    }
}

mod patched_v1 {
    use super::*;

    /// v1 with `fraud-check` added by a patch: new instances take it,
    /// instances started before skip it.
    #[durable(name = "onboard")]
    pub async fn onboard(ctx: &Ctx, user: String) -> Result<String, String> {
        step!("charge", {
            effect(ctx, "charge");
            Ok::<u64, String>(42)
        })?;
        if patched!("add-fraud-check") {
            step!("fraud-check", {
                effect(ctx, "fraud-check");
                Ok::<(), String>(())
            })?;
        }
        let team = step!("assign-team", {
            effect(ctx, "assign-team");
            Ok::<String, String>(format!("team-of-{user}"))
        })?;
        let approval: Approval = wait_for!("approval");
        step!("send-welcome", {
            effect(ctx, "send-welcome");
            Ok::<(), String>(())
        })?;
        Ok(format!("{team} approved={}", approval.approved))
    }
}

/// A step inserted before what in-flight instances passed strands them
/// unless a patch guards it; with `patched!` old instances skip it and new
/// ones take it.
#[tokio::test]
async fn a_patch_adds_a_step_for_new_instances_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(v1::onboard)).await;
    let _handle = engine
        .start(v1::onboard, "q1", "quinn".to_string())
        .await
        .unwrap();
    status_becomes(&engine, "q1", "the wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    engine.shutdown().await;

    // Unguarded: the gate names the problem and the fix.
    let engine = open(dir.path(), |b| b.register(inserted::onboard)).await;
    let gate = engine.compatibility().await.unwrap();
    assert_eq!(gate.len(), 1, "{gate:?}");
    assert_eq!(
        gate[0].reason,
        "step `fraud-check` is new and comes before `assign-team`, which this instance already \
         reached; put it in `if patched!(\"..\") { .. }` or in a new version"
    );
    engine.shutdown().await;

    // Guarded by a patch: compatible; the old instance skips it.
    let engine = open(dir.path(), |b| b.register(patched_v1::onboard)).await;
    assert_eq!(engine.compatibility().await.unwrap(), []);
    engine
        .send_event("q1", "approval", Approval { approved: true })
        .await
        .unwrap();
    let old = engine.attach(patched_v1::onboard, "q1").await.unwrap();
    assert_eq!(
        old.result().await.unwrap(),
        Ok("team-of-quinn approved=true".to_string())
    );
    assert_eq!(ran("q1/fraud-check"), 0);
    let new = engine
        .start(patched_v1::onboard, "q2", "quentin".to_string())
        .await
        .unwrap();
    engine
        .send_event("q2", "approval", Approval { approved: true })
        .await
        .unwrap();
    new.result().await.unwrap().unwrap();
    assert_eq!(ran("q2/fraud-check"), 1);
    engine.shutdown().await;
}

/// The deploy gate at test time: manifests kept in a file; a change that
/// strands in-flight instances fails with what to do, a version bump or a
/// patch passes.
#[test]
fn the_manifest_snapshot_catches_a_stranding_change() {
    use durable::manifest::{SnapshotMode, check_snapshot};
    use durable::manifest_of;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.txt");
    let v1 = manifest_of(v1::onboard);

    let err = check_snapshot(&file, std::slice::from_ref(&v1), SnapshotMode::Check).unwrap_err();
    assert!(
        err.contains(
            "onboard version 1 is not in the snapshot yet; record it with DURABLE_MANIFESTS=update"
        ),
        "{err}"
    );
    check_snapshot(&file, std::slice::from_ref(&v1), SnapshotMode::Update).unwrap();
    check_snapshot(&file, std::slice::from_ref(&v1), SnapshotMode::Check).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("workflow onboard version 1\ninput str\n"),
        "{text}"
    );
    assert!(
        text.contains("\nstep assign-team: str / str\nwait approval: {approved: bool}\n"),
        "{text}"
    );

    // v2 edited in place (same version): refused even when updating.
    let err = check_snapshot(&file, &[manifest_of(v2::onboard)], SnapshotMode::Update).unwrap_err();
    assert!(
        err.contains(
            "onboard version 1 changed in a way that strands its in-flight instances: step \
             `assign-team` is gone; step `fraud-check` is new and comes before `send-welcome`"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "Give the new code `#[durable(version = 2)]` and keep this version registered"
        ),
        "{err}"
    );
    // The same change as version 2, beside version 1: fine.
    check_snapshot(
        &file,
        &[v1.clone(), manifest_of(v2_versioned::onboard)],
        SnapshotMode::Update,
    )
    .unwrap();
    // A patch is a compatible change of version 1.
    let err = check_snapshot(
        &file,
        &[manifest_of(patched_v1::onboard)],
        SnapshotMode::Check,
    )
    .unwrap_err();
    assert!(
        err.contains("onboard version 1 changed compatibly"),
        "{err}"
    );
    check_snapshot(
        &file,
        &[manifest_of(patched_v1::onboard)],
        SnapshotMode::Update,
    )
    .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(
            "patch add-fraud-check\nstep fraud-check [patch add-fraud-check]: () / str\n"
        ),
        "{text}"
    );
}

/// This crate's own snapshot of the workflows above (`tests/manifests.txt`):
/// a change to how shapes are rendered or hashed would move every
/// fingerprint and strand every stored instance, and fails here.
#[test]
fn manifests_match_the_snapshot() {
    use durable::{manifest::assert_snapshot, manifest_of};
    assert_snapshot(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/manifests.txt"),
        &[
            manifest_of(patched_v1::onboard),
            manifest_of(v2_versioned::onboard),
            manifest_of(typed_v1::typed),
            manifest_of(gated),
            manifest_of(permissions),
            manifest_of(nested),
        ],
    );
}

/// What `stamped` saw each time it ran (first run, then replays).
static SEEN: Mutex<Vec<(std::time::SystemTime, u64, String)>> = Mutex::new(Vec::new());

#[durable]
async fn stamped(ctx: &Ctx, _n: u32) -> Result<(u64, u64, String), String> {
    let at = ctx.now().await;
    let n = ctx.random().await;
    let id = ctx.uuid().await;
    SEEN.lock().unwrap().push((at, n, id.clone()));
    let () = wait_for!("go");
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as u64;
    Ok((ms, n, id))
}

/// `ctx.now()`, `ctx.random()` and `ctx.uuid()` are checkpointed: a replay
/// after a restart sees the values of the first run.
#[tokio::test]
async fn clock_randomness_and_uuids_replay() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(stamped)).await;
    let _handle = engine.start(stamped, "r1", 1).await.unwrap();
    status_becomes(&engine, "r1", "the wait", |s| {
        matches!(s, Status::Waiting { .. })
    })
    .await;
    let first: Vec<String> = engine
        .history("r1")
        .await
        .unwrap()
        .steps
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(first, ["durable::now", "durable::random", "durable::uuid"]);
    engine.shutdown().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let engine = open(dir.path(), |b| b.register(stamped)).await;
    engine.send_event("r1", "go", ()).await.unwrap();
    let (ms, n, id) = engine
        .attach(stamped, "r1")
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    // Replayed, not drawn again: the run after the restart saw the values
    // of the first run.
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], seen[1]);
    assert_eq!((seen[0].1, seen[0].2.clone()), (n, id.clone()));
    let first_ms = seen[0]
        .0
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(first_ms, ms);
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert_eq!(engine.history("r1").await.unwrap().steps.len(), 4);
    engine.shutdown().await;
}

/// A value whose `Deserialize` reads any shape (`deserialize_any`, as
/// `serde_json::Value` and untagged enums do): it cannot be traced.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Opaque(u64);

impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> serde::de::Visitor<'de> for Any {
            type Value = Opaque;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Opaque, E> {
                Ok(Opaque(v))
            }
        }
        d.deserialize_any(Any)
    }
}

#[durable]
async fn opaque(_ctx: &Ctx, _n: u32) -> Result<u64, String> {
    let v = step!("fetch", Ok::<Opaque, String>(Opaque(9)))?;
    Ok(v.0)
}

/// A type that cannot be traced is never a silent pass: it is compared by
/// its Rust type name, and the deploy gate lists it.
#[tokio::test]
async fn untraceable_types_are_flagged_by_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), |b| b.register(opaque)).await;
    let gate = engine.compatibility().await.unwrap();
    assert_eq!(gate.len(), 1, "{gate:?}");
    assert_eq!(gate[0].instance, None);
    assert_eq!(
        gate[0].reason,
        "step `fetch`: untraceable evolution::Opaque: its type could not be traced and is \
         compared by its Rust name only"
    );
    let text = durable::manifest_of(opaque).to_text();
    assert!(
        text.contains("step fetch: untraceable evolution::Opaque / str"),
        "{text}"
    );
    engine.shutdown().await;
}
