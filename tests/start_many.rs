//! `Engine::start_many`: many instances recorded in one durable write.
//! Guards that every instance it returned a handle for runs to its end
//! (also after the process is killed right after it returned), that ids
//! are idempotency keys as with `start` (existing instances and an id
//! listed twice attach), and that a bad item writes nothing.

mod support;

use std::path::Path;
use std::sync::Mutex;

use durable::Status;
use durable::prelude::*;

/// Bodies that ran, by instance id.
static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn ran(id: &str) -> usize {
    RAN.lock().unwrap().iter().filter(|r| *r == id).count()
}

#[durable]
async fn square(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let id = ctx.id().to_string();
    step!(
        "square",
        async {
            RAN.lock().unwrap().push(id.clone());
            Ok::<_, String>(n * n)
        }
        .await
    )
}

async fn open(dir: &Path) -> Engine {
    Engine::builder()
        .path(dir)
        .register(square)
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn many_instances_start_in_one_call_and_each_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    // One started before: the batch attaches to it.
    let before = engine.run(square, "sq-7", 7).await.unwrap();
    assert_eq!(before, Ok(49));

    let items = (0..500u64).map(|n| (format!("sq-{n}"), n));
    let handles = engine.start_many(square, items).await.unwrap();
    assert_eq!(handles.len(), 500);
    for (n, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.id(), format!("sq-{n}"));
        let out = support::guarded("an instance completes", handle.result()).await;
        assert_eq!(out.unwrap(), Ok((n * n) as u64));
    }
    for n in 0..500 {
        assert_eq!(ran(&format!("sq-{n}")), 1, "sq-{n}");
    }
    // Again: every id attaches, nothing runs.
    let again = engine
        .start_many(square, (0..500u64).map(|n| (format!("sq-{n}"), n)))
        .await
        .unwrap();
    for handle in again {
        handle.result().await.unwrap().unwrap();
    }
    for n in 0..500 {
        assert_eq!(ran(&format!("sq-{n}")), 1, "sq-{n}");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn an_id_listed_twice_is_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let handles = engine
        .start_many(
            square,
            [("twice", 3), ("other", 4), ("twice", 3)].map(|(i, n)| (i.to_string(), n)),
        )
        .await
        .unwrap();
    let outs: Vec<_> = outputs(handles).await;
    assert_eq!(outs, vec![Ok(9), Ok(16), Ok(9)]);
    assert_eq!(ran("twice"), 1);
    engine.shutdown().await;
}

async fn outputs(handles: Vec<durable::Handle<Result<u64, String>>>) -> Vec<Result<u64, String>> {
    let mut outs = Vec::new();
    for h in handles {
        outs.push(
            support::guarded("an instance completes", h.result())
                .await
                .unwrap(),
        );
    }
    outs
}

#[tokio::test]
async fn a_bad_item_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    // An invalid id among valid ones.
    let err = engine
        .start_many(
            square,
            [("ok-1", 1u64), ("", 2), ("ok-3", 3)].map(|(i, n)| (i.to_string(), n)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Usage(UsageError::InvalidId { .. })),
        "{err:?}"
    );
    // The same id with two inputs.
    let err = engine
        .start_many(
            square,
            [("dup", 1u64), ("ok-4", 4), ("dup", 2)].map(|(i, n)| (i.to_string(), n)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Usage(UsageError::IdConflict { .. })),
        "{err:?}"
    );
    for id in ["ok-1", "ok-3", "dup", "ok-4"] {
        assert!(
            matches!(
                engine.status(id).await,
                Err(Error::Usage(UsageError::NotFound { .. }))
            ),
            "{id} was written"
        );
    }
    // An id whose stored instance has another input: the others are
    // recorded and run; the call reports the conflict.
    engine.run(square, "taken", 5).await.unwrap().unwrap();
    let err = engine
        .start_many(
            square,
            [("fresh-1", 1u64), ("taken", 6)].map(|(i, n)| (i.to_string(), n)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Usage(UsageError::IdConflict { .. })),
        "{err:?}"
    );
    let fresh = engine.attach(square, "fresh-1").await.unwrap();
    assert_eq!(
        support::guarded("fresh-1 completes", fresh.result())
            .await
            .unwrap(),
        Ok(1)
    );
    engine.shutdown().await;
}

const DIR_ENV: &str = "DURABLE_START_MANY_DIR";
const COUNT: u64 = 2_000;

/// Blocks every body until the process dies: the instances are recorded
/// but none finishes before the kill.
#[durable(name = "blocked_square")]
async fn blocked_square(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!(
        "square",
        async {
            if std::env::var_os(DIR_ENV).is_some() {
                std::future::pending::<()>().await;
            }
            Ok::<_, String>(n * n)
        }
        .await
    )
}

/// The child: starts every instance with one call, says so, and waits to
/// be killed.
#[tokio::test]
async fn start_many_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let engine = Engine::builder()
        .path(dir.join("store"))
        .register(blocked_square)
        .open()
        .await
        .unwrap();
    let items = (0..COUNT).map(|n| (format!("b-{n}"), n));
    let handles = engine.start_many(blocked_square, items).await.unwrap();
    assert_eq!(handles.len() as u64, COUNT);
    std::fs::write(dir.join("returned"), b"").unwrap();
    std::future::pending::<()>().await;
}

/// Once `start_many` returned, every instance is durable: a SIGKILL right
/// after it loses none, and each runs to its end after the restart.
#[tokio::test]
async fn every_instance_survives_a_kill_right_after_start_many_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = support::test_process("start_many_child")
        .env(DIR_ENV, dir.path())
        .spawn()
        .unwrap();
    let returned = dir.path().join("returned");
    support::wait_until("start_many returned in the child", async || {
        if returned.exists() {
            Ok(())
        } else if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended first: {status}");
        } else {
            Err("not yet")
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let engine = Engine::builder()
        .path(dir.path().join("store"))
        .register(blocked_square)
        .open()
        .await
        .unwrap();
    for n in 0..COUNT {
        let id = format!("b-{n}");
        let handle = engine.attach(blocked_square, id.as_str()).await.unwrap();
        let out = support::guarded("a recovered instance completes", handle.result()).await;
        assert_eq!(out.unwrap(), Ok(n * n), "{id}");
    }
    assert!(matches!(
        engine.status("b-0").await.unwrap(),
        Status::Completed { .. }
    ));
    engine.shutdown().await;
}
