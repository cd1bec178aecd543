//! Guards "clear failure": a locked, corrupt or newer store, a checkpoint that
//! no longer decodes, and an instance whose workflow is not registered each
//! give a typed error or report, never a panic, and never damage stored data.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use durable::prelude::*;
use durable::store::{Batch, SledStore, Store, Tree};
use durable::{Status, StepOutcome, StoreError};

/// Instances of `typed_v1` allowed past their second step; the others wait
/// there. Per id, so tests running in parallel do not release each other's.
static RELEASED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

async fn park(id: &str) -> Result<(), String> {
    while !RELEASED.lock().unwrap().iter().any(|r| r == id) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[durable(name = "typed")]
async fn typed_v1(ctx: &Ctx, _n: u32) -> Result<u64, String> {
    let v = step!("value", async { Ok::<u64, String>(7) }.await)?;
    step!("park", park(ctx.id()).await)?;
    Ok(v)
}

#[durable(name = "typed")]
async fn typed_v2(_ctx: &Ctx, _n: u32) -> Result<String, String> {
    let v = step!(
        "value",
        async { Ok::<String, String>("seven".into()) }.await
    )?;
    Ok(v)
}

/// Starts `typed_v1` as `id`, waits until its first step is checkpointed
/// (it then waits in its second), and shuts the engine down there.
async fn stop_after_first_step(dir: &Path, id: &str) {
    let engine = Engine::builder()
        .path(dir)
        .register(typed_v1)
        .open()
        .await
        .unwrap();
    let _handle = engine.start(typed_v1, id, 0).await.unwrap();
    support::wait_until("the first step", async || match engine.history(id).await {
        // One step finished; the second is running (history lists it too,
        // with no finish time).
        Ok(h) if h.steps.iter().filter(|s| s.finished_at.is_some()).count() == 1 => Ok(()),
        other => Err(other.map(|h| h.steps)),
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn a_checkpoint_of_another_type_blocks_the_instance_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    stop_after_first_step(dir.path(), "t-1").await;

    // New code: the step now returns a String.
    let engine = Engine::builder()
        .path(dir.path())
        .register(typed_v2)
        .open()
        .await
        .unwrap();
    assert_eq!(engine.recovery().resumed, 1);
    let err = engine
        .attach(typed_v2, "t-1")
        .await
        .unwrap()
        .result()
        .await
        .unwrap_err();
    match &err {
        Error::Replay(ReplayError::Incompatible {
            instance,
            workflow,
            reason,
        }) => {
            assert_eq!((instance.as_str(), workflow.as_str()), ("t-1", "typed"));
            assert_eq!(
                reason,
                "step `value` was written as `u64`, the code now reads `str`"
            );
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    assert!(matches!(
        engine.status("t-1").await.unwrap(),
        Status::Incompatible { .. }
    ));
    engine.shutdown().await;

    // The old code resumes the same instance from the untouched checkpoint.
    RELEASED.lock().unwrap().push("t-1".into());
    let engine = Engine::builder()
        .path(dir.path())
        .register(typed_v1)
        .open()
        .await
        .unwrap();
    assert_eq!(
        engine
            .attach(typed_v1, "t-1")
            .await
            .unwrap()
            .result()
            .await
            .unwrap(),
        Ok(7)
    );
    let history = engine.history("t-1").await.unwrap();
    assert!(
        matches!(&history.steps[0].outcome, StepOutcome::Value { type_name, .. } if type_name.contains("u64"))
    );
}

#[durable]
async fn slow_retry(ctx: &Ctx, _n: u32) -> Result<u32, String> {
    let policy = RetryPolicy::default()
        .max_attempts(5)
        .initial_delay(Duration::from_secs(3600));
    step!(
        "flaky",
        retry = policy,
        async {
            let attempt_marker = ctx.id().to_string();
            if !RETRIED.lock().unwrap().contains(&attempt_marker) {
                RETRIED.lock().unwrap().push(attempt_marker);
                return Err("first attempt fails".to_string());
            }
            Ok(1)
        }
        .await
    )
}

static RETRIED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[tokio::test]
async fn attempt_counts_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .path(dir.path())
        .register(slow_retry)
        .open()
        .await
        .unwrap();
    let _handle = engine.start(slow_retry, "r-1", 0).await.unwrap();
    support::wait_until("a recorded failed attempt", async || {
        match engine.history("r-1").await {
            Ok(h)
                if h.steps
                    .first()
                    .is_some_and(|s| matches!(s.outcome, StepOutcome::Retrying { .. })) =>
            {
                Ok(())
            }
            other => Err(other.map(|h| h.steps)),
        }
    })
    .await;
    engine.shutdown().await;
    let engine = Engine::builder()
        .path(dir.path())
        .register(slow_retry)
        .open()
        .await
        .unwrap();
    let handle = engine.attach(slow_retry, "r-1").await.unwrap();
    assert_eq!(
        support::guarded("the resumed retry", handle.result())
            .await
            .unwrap(),
        Ok(1)
    );
    assert_eq!(engine.history("r-1").await.unwrap().steps[0].attempts, 2);
}

#[tokio::test]
async fn unregistered_workflows_are_reported_and_do_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    stop_after_first_step(dir.path(), "orphan").await;

    let engine = Engine::builder()
        .path(dir.path())
        .register(slow_retry)
        .open()
        .await
        .unwrap();
    let report = engine.recovery();
    assert_eq!(report.resumed, 0);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, "orphan");
    assert!(report.skipped[0].1.contains("typed"), "{report:?}");
    assert!(matches!(
        engine.status("orphan").await.unwrap(),
        Status::Running { .. }
    ));
    RETRIED.lock().unwrap().push("other".into());
    assert_eq!(engine.run(slow_retry, "other", 0).await.unwrap(), Ok(1));
}

#[tokio::test]
async fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put(
            Tree::Meta,
            b"format_version".to_vec(),
            99u32.to_be_bytes().to_vec(),
        );
        store.apply(&[batch]).unwrap();
    }
    let err = Engine::builder().path(dir.path()).open().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Store(StoreError::FormatTooNew { found: 99, .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn corrupt_stores_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the store directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a store").unwrap();
    let err = Engine::builder().path(&file).open().await.unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );

    // A store whose files are garbage.
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("conf"), vec![0xA5; 200]).unwrap();
    std::fs::write(garbage.join("db"), vec![0x5A; 1 << 16]).unwrap();
    let err = Engine::builder().path(&garbage).open().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Store(StoreError::Corrupt { .. } | StoreError::Io { .. })
        ),
        "{err:?}"
    );
}

const LOCK_CHILD: &str = "DURABLE_LOCK_CHILD";

/// Runs in the child process only: holds the store open until killed.
#[tokio::test]
async fn lock_holder_child() {
    let Ok(dir) = std::env::var(LOCK_CHILD) else {
        return;
    };
    let _engine = Engine::builder()
        .path(Path::new(&dir).join("store"))
        .open()
        .await
        .unwrap();
    std::fs::write(Path::new(&dir).join("ready"), b"").unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn a_store_held_by_another_process_is_locked() {
    if std::env::var(LOCK_CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holder_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(LOCK_CHILD, dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    support::wait_until("the child to open the store", async || {
        let ready = dir.path().join("ready");
        if ready.exists() {
            Ok(())
        } else if let Ok(Some(status)) = child.try_wait() {
            panic!("the lock holder exited ({status}) before it opened the store");
        } else {
            Err(format!("no {}", ready.display()))
        }
    })
    .await;
    let store = dir.path().join("store");
    let err = Engine::builder().path(&store).open().await.unwrap_err();
    child.kill().unwrap();
    child.wait().unwrap();
    match &err {
        Error::Store(StoreError::Locked { path }) => assert_eq!(path, &store),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    // Once the holder is gone, the store opens.
    Engine::builder().path(&store).open().await.unwrap();
}

/// An i/o failure keeps its cause: `source()` walks from the umbrella error
/// down to the operating system's error, which can be downcast.
#[tokio::test]
async fn an_io_failure_keeps_the_os_error_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = Engine::builder()
        .path(file.join("store"))
        .open()
        .await
        .expect_err("a store under a regular file cannot open");
    assert!(
        matches!(err, Error::Store(StoreError::Io { .. })),
        "{err:?}"
    );
    let mut chain: Vec<String> = Vec::new();
    let mut os_code = None;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = next {
        chain.push(e.to_string());
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            os_code = io.raw_os_error();
        }
        next = e.source();
    }
    assert!(chain.len() >= 2, "no source: {chain:?}");
    assert_eq!(os_code, Some(libc::ENOTDIR), "{chain:?}");
}
