//! Child workflows (`Ctx::start_child`, `Child::result`,
//! `Ctx::run_children`) on the embedded store: a parent gets its
//! children's outputs and failures, a replay starts no child twice, the
//! histories link parent and children, cancelling a parent cancels its
//! children (not a detached one), a fan-out never runs more children at
//! once than its bound, and a SIGKILL of a real process in the middle of a
//! child leaves nothing started twice.

mod support;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use durable::prelude::*;
use durable::{ChildOptions, Status, TransitionKind};

/// Bodies that ran, by instance id.
static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn ran(id: &str) -> usize {
    RAN.lock().unwrap().iter().filter(|r| *r == id).count()
}

fn text(e: Error) -> String {
    e.to_string()
}

#[durable]
async fn add_one(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let id = ctx.id().to_string();
    step!(
        "add",
        async {
            RAN.lock().unwrap().push(id.clone());
            if n == 13 {
                panic!("unlucky");
            }
            if n == 7 {
                return Err(permanent("seven".to_string()));
            }
            Ok::<_, String>(n + 1)
        }
        .await
    )
}

#[durable]
async fn two_children(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let a = ctx.start_child(add_one, None, n).await.map_err(text)?;
    let b = ctx.start_child(add_one, None, n * 10).await.map_err(text)?;
    let a = a.result().await.map_err(text)??;
    let b = b.result().await.map_err(text)??;
    Ok(a + b)
}

async fn open(dir: &Path) -> Engine {
    Engine::builder()
        .path(dir)
        .register(add_one)
        .register(two_children)
        .register(failing_child)
        .register(waiter)
        .register(cancellable_parent)
        .register(fan_out)
        .register(gated_child)
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_parent_gets_its_childrens_outputs_and_the_histories_link_them() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let out = support::guarded("the parent completes", engine.run(two_children, "p1", 2)).await;
    assert_eq!(out.unwrap(), Ok(3 + 21));
    assert_eq!(ran("p1/add_one-0"), 1);
    assert_eq!(ran("p1/add_one-1"), 1);

    let parent = engine.history("p1").await.unwrap();
    assert_eq!(parent.children, vec!["p1/add_one-0", "p1/add_one-1"]);
    assert_eq!(parent.parent, None);
    let child = engine.history("p1/add_one-1").await.unwrap();
    assert_eq!(child.parent.as_deref(), Some("p1"));
    assert!(
        child.transitions.iter().any(|t| t.kind
            == TransitionKind::ChildOf {
                parent: "p1".into(),
                cancel_with_parent: true
            }),
        "{:?}",
        child.transitions
    );
    assert!(matches!(child.status, Status::Completed { .. }));

    // Started again: the parent is attached to, no child runs again.
    let again = engine.run(two_children, "p1", 2).await.unwrap();
    assert_eq!(again, Ok(24));
    assert_eq!(ran("p1/add_one-0"), 1);
    engine.shutdown().await;

    // After a reopen too: the recorded results are what a replay reads.
    let engine = open(dir.path()).await;
    assert_eq!(engine.run(two_children, "p1", 2).await.unwrap(), Ok(24));
    assert_eq!(ran("p1/add_one-1"), 1);
    engine.shutdown().await;
}

#[durable]
async fn failing_child(ctx: &Ctx, _n: u64) -> Result<String, String> {
    let child = ctx
        .start_child(add_one, "unlucky-child", 13)
        .await
        .map_err(text)?;
    assert_eq!(child.id(), "unlucky-child");
    // A child that returned its own `Err` completed: its output is that.
    let seven = ctx.start_child(add_one, None, 7).await.map_err(text)?;
    assert_eq!(
        seven.result().await.map_err(text)?,
        Err("seven".to_string())
    );
    match child.result().await {
        Err(Error::Instance(InstanceError::Failed { instance, .. })) => Ok(instance),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test]
async fn a_failed_child_is_an_error_of_the_parent_naming_the_child_and_an_err_is_an_output() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let out = support::guarded("the parent completes", engine.run(failing_child, "pf", 0)).await;
    assert_eq!(out.unwrap(), Ok("unlucky-child".to_string()));
    assert!(matches!(
        engine.status("unlucky-child").await.unwrap(),
        Status::Failed { .. }
    ));
    let attempts = ran("unlucky-child");
    engine.shutdown().await;
    // The failure was recorded in the parent: a replay does not ask again.
    let engine = open(dir.path()).await;
    assert_eq!(
        engine.run(failing_child, "pf", 0).await.unwrap(),
        Ok("unlucky-child".to_string())
    );
    assert_eq!(ran("unlucky-child"), attempts);
    engine.shutdown().await;
}

#[durable]
async fn waiter(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let go: u64 = wait_for!("go");
    Ok(n + go)
}

#[durable]
async fn cancellable_parent(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let bound = ctx.start_child(waiter, None, n).await.map_err(text)?;
    let free = ctx
        .start_child_with(
            waiter,
            format!("{}-free", ctx.id()),
            n,
            ChildOptions::new().detached(),
        )
        .await
        .map_err(text)?;
    let a = bound.result().await.map_err(text)??;
    let b = free.result().await.map_err(text)??;
    Ok(a + b)
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_children_but_not_a_detached_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let handle = engine.start(cancellable_parent, "pc", 1).await.unwrap();
    for id in ["pc/waiter-0", "pc-free"] {
        support::wait_until("the children wait", async || {
            match engine.status(id).await {
                Ok(Status::Waiting { .. }) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    engine.cancel("pc").await.unwrap();
    assert!(matches!(
        handle.result().await,
        Err(Error::Instance(InstanceError::Cancelled { .. }))
    ));
    assert!(matches!(
        engine.status("pc/waiter-0").await.unwrap(),
        Status::Cancelled
    ));
    // The detached child runs on.
    assert!(matches!(
        engine.status("pc-free").await.unwrap(),
        Status::Waiting { .. }
    ));
    engine.send_event("pc-free", "go", 5u64).await.unwrap();
    let free = engine.attach(waiter, "pc-free").await.unwrap();
    assert_eq!(
        support::guarded("the detached child completes", free.result())
            .await
            .unwrap(),
        Ok(6)
    );
    engine.shutdown().await;
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

#[durable]
async fn gated_child(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!(
        "work",
        async {
            let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
            MOST.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(n * 2)
        }
        .await
    )
}

#[durable]
async fn fan_out(ctx: &Ctx, count: u64) -> Result<Vec<u64>, String> {
    let results = ctx
        .run_children(gated_child, 0..count, 3)
        .await
        .map_err(text)?;
    results
        .into_iter()
        .map(|r| r.map_err(text)?)
        .collect::<Result<Vec<u64>, String>>()
}

#[tokio::test]
async fn a_fan_out_runs_at_most_its_bound_at_once_and_keeps_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let out = support::guarded("the fan-out completes", engine.run(fan_out, "fan", 20)).await;
    assert_eq!(
        out.unwrap(),
        Ok((0..20).map(|n| n * 2).collect::<Vec<u64>>())
    );
    let most = MOST.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} children ran at once");
    assert_eq!(engine.history("fan").await.unwrap().children.len(), 20);
    engine.shutdown().await;
}

const DIR_ENV: &str = "DURABLE_CHILDREN_DIR";

/// Where the ledgered children write (set by the test that uses them).
static LEDGER_DIR: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// The second child blocks in its step until the process dies (in the
/// killed process only).
#[durable]
async fn ledgered_child(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!(
        "work",
        async {
            let dir = LEDGER_DIR.lock().unwrap().clone();
            if let Some(dir) = dir {
                support::ledger_in(&dir, &format!("BODY {n}"));
                if n == 2 && std::env::var_os("DURABLE_CHILDREN_BLOCK").is_some() {
                    std::future::pending::<()>().await;
                }
            }
            Ok::<_, String>(n * 100)
        }
        .await
    )
}

#[durable]
async fn ledgered_parent(ctx: &Ctx, _n: u64) -> Result<u64, String> {
    let one = ctx
        .start_child(ledgered_child, None, 1)
        .await
        .map_err(text)?;
    let one = one.result().await.map_err(text)??;
    let two = ctx
        .start_child(ledgered_child, None, 2)
        .await
        .map_err(text)?;
    let two = two.result().await.map_err(text)??;
    Ok(one + two)
}

async fn open_ledgered(dir: &Path) -> Engine {
    Engine::builder()
        .path(dir.join("store"))
        .register(ledgered_parent)
        .register(ledgered_child)
        .open()
        .await
        .unwrap()
}

/// The killed process: starts the parent and waits to be killed.
#[tokio::test]
async fn children_kill_target() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    *LEDGER_DIR.lock().unwrap() = Some(dir.clone().into());
    let engine = open_ledgered(Path::new(&dir)).await;
    let _handle = engine.start(ledgered_parent, "lp", 0).await.unwrap();
    std::future::pending::<()>().await;
}

/// A SIGKILL while the second child runs: after the restart the first
/// child is not run again (its result is the parent's checkpoint), the
/// second runs to its end, and no child was started twice.
#[tokio::test]
async fn a_kill_in_the_middle_of_a_child_starts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = support::test_process("children_kill_target")
        .env(DIR_ENV, dir.path())
        .env("DURABLE_CHILDREN_BLOCK", "1")
        .spawn()
        .unwrap();
    support::wait_until("the second child runs in the killed process", async || {
        if support::read_ledger(dir.path())
            .iter()
            .any(|l| l == "BODY 2")
        {
            Ok(())
        } else if let Ok(Some(status)) = target.try_wait() {
            panic!("the process ended first: {status}");
        } else {
            Err("not yet")
        }
    })
    .await;
    target.kill().unwrap();
    target.wait().unwrap();

    *LEDGER_DIR.lock().unwrap() = Some(dir.path().to_path_buf());
    let engine = open_ledgered(dir.path()).await;
    let parent = engine.attach(ledgered_parent, "lp").await.unwrap();
    let out = support::guarded("the parent completes after the restart", parent.result()).await;
    assert_eq!(out.unwrap(), Ok(300));
    let ledger = support::read_ledger(dir.path());
    let count = |line: &str| ledger.iter().filter(|l| *l == line).count();
    assert_eq!(count("BODY 1"), 1, "{ledger:?}");
    // In flight when killed: it runs again, once.
    assert_eq!(count("BODY 2"), 2, "{ledger:?}");
    let page = engine.list(&durable::ListFilter::new()).await.unwrap();
    let mut ids: Vec<String> = page.instances.into_iter().map(|i| i.id).collect();
    ids.sort();
    assert_eq!(ids, ["lp", "lp/ledgered_child-0", "lp/ledgered_child-1"]);
    engine.shutdown().await;
}

#[durable]
async fn patient_parent(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let child = ctx
        .start_child(waiter, "patient-child", n)
        .await
        .map_err(text)?;
    child.result().await.map_err(text)?
}

/// A parent that waits long for its child parks (it holds no task), is not
/// counted as resumed without progress across restarts, and wakes to take
/// the child's output once the child ends.
#[tokio::test]
async fn a_waiting_parent_parks_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let open = async |dir: &Path| {
        Engine::builder()
            .path(dir)
            .max_recoveries(1)
            .register(waiter)
            .register(patient_parent)
            .open()
            .await
            .unwrap()
    };
    let engine = open(dir.path()).await;
    let _ = engine.start(patient_parent, "patient", 4).await.unwrap();
    support::wait_until("the parent parks on its child", async || {
        match engine.status("patient").await {
            Ok(Status::Waiting { event, .. }) if event.ends_with("patient-child") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    engine.shutdown().await;
    for _ in 0..3 {
        let engine = open(dir.path()).await;
        engine.shutdown().await;
    }
    let engine = open(dir.path()).await;
    engine
        .send_event("patient-child", "go", 10u64)
        .await
        .unwrap();
    let parent = engine.attach(patient_parent, "patient").await.unwrap();
    let out = support::guarded("the parent completes", parent.result()).await;
    assert_eq!(out.unwrap(), Ok(14));
    engine.shutdown().await;
}

#[durable]
async fn napping_child(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    sleep!("nap", std::time::Duration::from_secs(3_600));
    Ok(n * 3)
}

#[durable]
async fn napping_parent(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let child = ctx
        .start_child(napping_child, None, n)
        .await
        .map_err(text)?;
    child.result().await.map_err(text)?
}

/// On the test kit's clock: the parent parks while its child sleeps an
/// hour, and an hour later both are done (the child's end wakes the
/// parent, whose own recheck is not due yet).
#[tokio::test]
async fn the_test_kit_drives_a_parent_and_its_sleeping_child() {
    let kit = durable::testing::TestEngine::open(
        Engine::builder()
            .register(napping_child)
            .register(napping_parent),
    )
    .await
    .unwrap();
    let handle = kit
        .engine()
        .start(napping_parent, "napper", 5)
        .await
        .unwrap();
    kit.run_until_idle().await;
    assert!(matches!(
        kit.engine().status("napper").await.unwrap(),
        Status::Waiting { .. }
    ));
    kit.advance(std::time::Duration::from_secs(3_600)).await;
    assert!(matches!(
        kit.engine().status("napper").await.unwrap(),
        Status::Completed { .. }
    ));
    assert_eq!(handle.result().await.unwrap(), Ok(15));
    kit.shutdown().await;
}

/// Gives up after an hour (its own deadline), sleeping two.
#[durable(timeout = "1h")]
async fn hasty_child(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    sleep!("long-nap", std::time::Duration::from_secs(7_200));
    Ok(n)
}

#[durable]
async fn hasty_parent(ctx: &Ctx, n: u64) -> Result<String, String> {
    let child = ctx.start_child(hasty_child, None, n).await.map_err(text)?;
    match child.result().await {
        Err(Error::Instance(InstanceError::Cancelled { instance })) => Ok(instance),
        other => Err(format!("{other:?}")),
    }
}

/// A child gets its workflow's own deadline (`#[durable(timeout)]`) as
/// any instance does: when it passes, the child is cancelled and its
/// parent gets that.
#[tokio::test]
async fn a_child_keeps_its_workflows_own_deadline() {
    let kit = durable::testing::TestEngine::open(
        Engine::builder()
            .register(hasty_child)
            .register(hasty_parent),
    )
    .await
    .unwrap();
    let handle = kit.engine().start(hasty_parent, "hasty", 1).await.unwrap();
    kit.advance(std::time::Duration::from_secs(3_601)).await;
    assert_eq!(
        handle.result().await.unwrap(),
        Ok("hasty/hasty_child-0".into())
    );
    let child = kit.engine().history("hasty/hasty_child-0").await.unwrap();
    assert!(
        child
            .transitions
            .iter()
            .any(|t| matches!(t.kind, TransitionKind::DeadlinePassed { .. })),
        "{:?}",
        child.transitions
    );
    kit.shutdown().await;
}
