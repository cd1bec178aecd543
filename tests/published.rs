//! Published state (`Ctx::set_event`, `Engine::get_event`), streams
//! (`Ctx::write_stream`, `Engine::read_stream`) and idempotent
//! events (`Engine::send_event_with_key`) on the embedded store.
//!
//! The crash test runs the workflow in a child process (this test binary,
//! re-run with `--exact publish_child` and `DURABLE_PUBLISH_CHILD` set to
//! its directory), SIGKILLs it while a step body is in flight after two
//! `set_event`s, and reopens the store here: the values are readable, the
//! replay did not publish again (a value holds the pid of the process that
//! published it), and the workflow finishes.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use durable::Status;
use durable::prelude::*;

const CHILD_ENV: &str = "DURABLE_PUBLISH_CHILD";
const HANG_ENV: &str = "DURABLE_PUBLISH_HANG";

async fn hold(dir: &str) -> Result<u32, String> {
    support::ledger_in(dir, "BEGIN hold");
    if std::env::var_os(HANG_ENV).is_some() {
        // In flight until the parent kills this process.
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    Ok(7)
}

#[durable]
async fn publisher(ctx: &Ctx, dir: String) -> Result<u32, String> {
    support::ledger_in(&dir, "BODY");
    let text = |e: Error| e.to_string();
    ctx.set_event("status", &"working".to_string())
        .await
        .map_err(text)?;
    // Not checkpointed by a step: a replay that published again would
    // store the pid of the process that replays.
    ctx.set_event("publisher", &std::process::id())
        .await
        .map_err(text)?;
    ctx.write_stream("log", &std::process::id())
        .await
        .map_err(text)?;
    support::ledger_in(&dir, "PUBLISHED");
    let n = step!("hold", hold(&dir).await)?;
    ctx.set_event("status", &"done".to_string())
        .await
        .map_err(text)?;
    ctx.write_stream("log", &std::process::id())
        .await
        .map_err(text)?;
    Ok(n)
}

async fn open(dir: &Path) -> Engine {
    Engine::builder()
        .path(dir.join("store"))
        .register(publisher)
        .register(answerer)
        .register(two_goes)
        .open()
        .await
        .unwrap()
}

/// Runs in the child process only.
#[tokio::test]
async fn publish_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let engine = open(Path::new(&dir)).await;
    let out = engine.run(publisher, "pub-1", dir.clone()).await.unwrap();
    support::ledger_in(&dir, &format!("RESULT {out:?}"));
}

fn spawn_child(dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "publish_child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, dir)
        .env(HANG_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn set_event_survives_a_sigkill_and_is_not_published_again() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(dir.path());
    let child_pid = child.id();
    support::wait_until_blocking("the child's step is in flight", || {
        let ledger = support::read_ledger(dir.path());
        if ledger.iter().any(|l| l == "BEGIN hold") {
            Ok(())
        } else {
            Err(ledger)
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let engine = open(dir.path()).await;
        let path = dir.path().to_string_lossy().into_owned();
        let out = support::guarded(
            "the resumed instance finishes",
            engine.run(publisher, "pub-1", path),
        )
        .await
        .unwrap();
        assert_eq!(out, Ok(7));
        let publisher_pid: Option<u32> = engine.get_event("pub-1", "publisher").await.unwrap();
        assert_eq!(
            publisher_pid,
            Some(child_pid),
            "the replay published again (this process is {})",
            std::process::id()
        );
        let status: Option<String> = engine.get_event("pub-1", "status").await.unwrap();
        assert_eq!(status.as_deref(), Some("done"), "last write wins");
        // The stream: the child's entry once, then this process's.
        let log = engine.read_stream::<u32>("pub-1", "log", 0).await.unwrap();
        assert_eq!(log, (vec![child_pid, std::process::id()], 2));
        let rest = engine.read_stream::<u32>("pub-1", "log", 2).await.unwrap();
        assert_eq!(rest, (vec![], 2));

        // A read as another type is refused; unknown instances and keys.
        let wrong = engine.get_event::<String>("pub-1", "publisher").await;
        assert!(
            matches!(
                &wrong,
                Err(Error::Usage(UsageError::PublishedTypeMismatch { key, .. })) if key == "publisher"
            ),
            "{wrong:?}"
        );
        let unknown = engine.get_event::<u32>("nosuch", "publisher").await;
        assert!(
            matches!(unknown, Err(Error::Usage(UsageError::NotFound { .. }))),
            "{unknown:?}"
        );
        assert_eq!(engine.get_event::<u32>("pub-1", "unset").await.unwrap(), None);
        engine.shutdown().await;
    });

    let ledger = support::read_ledger(dir.path());
    let count = |line: &str| ledger.iter().filter(|l| *l == line).count();
    assert_eq!(count("BODY"), 2, "one run per process: {ledger:?}");
    assert_eq!(count("PUBLISHED"), 2, "{ledger:?}");
    assert_eq!(
        count("BEGIN hold"),
        2,
        "the killed step runs again: {ledger:?}"
    );
}

#[durable]
async fn answerer(ctx: &Ctx, _n: u32) -> Result<u64, String> {
    let question: u64 = wait_for!("question");
    ctx.set_event("answer", &(question * 2))
        .await
        .map_err(|e| e.to_string())?;
    ctx.write_stream("answers", &(question * 2))
        .await
        .map_err(|e| e.to_string())?;
    Ok(question)
}

async fn wait_status(engine: &Engine, id: &str, waiting: bool) {
    support::wait_until("the instance's status", async || {
        match engine.status(id).await {
            Ok(Status::Waiting { .. }) if waiting => Ok(()),
            Ok(Status::Completed { .. }) if !waiting => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_event_with_a_timeout_returns_once_the_key_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let handle = engine.start(answerer, "ask-1", 0).await.unwrap();
    wait_status(&engine, "ask-1", true).await;
    assert_eq!(
        engine.get_event::<u64>("ask-1", "answer").await.unwrap(),
        None
    );
    let (got, sent) = tokio::join!(
        engine.get_event_timeout::<u64>("ask-1", "answer", support::hang_guard()),
        async {
            // `join!` polls the reader first: it subscribes, reads `None`
            // (the embedded read completes in its first poll) and waits;
            // only then does this send.
            tokio::task::yield_now().await;
            engine.send_event("ask-1", "question", 21u64).await
        }
    );
    sent.unwrap();
    assert_eq!(got.unwrap(), Some(42));
    let out = support::guarded("the instance completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(21));
    // A key never set: `None` once the timeout passed.
    let never = engine
        .get_event_timeout::<u64>("ask-1", "never", Duration::from_millis(50))
        .await;
    assert_eq!(never.unwrap(), None);
    // Errors come at once, not after the timeout.
    let wrong = engine
        .get_event_timeout::<String>("ask-1", "answer", support::hang_guard())
        .await;
    assert!(
        matches!(
            wrong,
            Err(Error::Usage(UsageError::PublishedTypeMismatch { .. }))
        ),
        "{wrong:?}"
    );
    engine.shutdown().await;
}

#[durable]
async fn two_goes(_ctx: &Ctx, _n: u32) -> Result<(u64, u64), String> {
    // One wait site, two occurrences: the first and the second `go`.
    let mut got = Vec::new();
    for _ in 0..2 {
        let go: u64 = wait_for!("go");
        got.push(go);
    }
    Ok((got[0], got[1]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_twice_delivers_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let handle = engine.start(two_goes, "goes", 0).await.unwrap();
    let send = |payload: u64, key: &'static str| {
        let engine = engine.clone();
        async move {
            engine
                .send_event_with_key("goes", "go", payload, key)
                .await
                .unwrap()
        }
    };
    assert!(send(1, "delivery-a").await, "the first send stores");
    assert!(!send(2, "delivery-a").await, "a retry is a no-op");
    assert!(send(3, "delivery-b").await);
    let out = support::guarded("the instance completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok((1, 3)));
    // After the end: a retry of a delivered send is still a no-op, a new
    // key is refused like any event to a finished instance.
    assert!(!send(4, "delivery-b").await);
    let late = engine
        .send_event_with_key("goes", "go", 5u64, "delivery-c")
        .await;
    assert!(
        matches!(late, Err(Error::Usage(UsageError::InstanceFinished { .. }))),
        "{late:?}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_remembered_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let _ = engine.start(two_goes, "goes", 0).await.unwrap();
    assert!(
        engine
            .send_event_with_key("goes", "go", 1u64, "k1")
            .await
            .unwrap()
    );
    engine.shutdown().await;

    let engine = open(dir.path()).await;
    assert!(
        !engine
            .send_event_with_key("goes", "go", 2u64, "k1")
            .await
            .unwrap()
    );
    // The plain send does not look at keys.
    engine.send_event("goes", "go", 3u64).await.unwrap();
    let out = support::guarded("the instance completes", engine.run(two_goes, "goes", 0))
        .await
        .unwrap();
    assert_eq!(out, Ok((1, 3)));
    engine.shutdown().await;
}

/// Purge deletes published state, streams and send keys with the
/// instance: an instance started again under the same id sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_published_state_streams_and_send_keys() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let _ = engine.start(answerer, "p", 0).await.unwrap();
    assert!(
        engine
            .send_event_with_key("p", "question", 5u64, "k")
            .await
            .unwrap()
    );
    wait_status(&engine, "p", false).await;
    assert_eq!(
        engine.get_event::<u64>("p", "answer").await.unwrap(),
        Some(10)
    );
    let stream = engine.read_stream::<u64>("p", "answers", 0).await.unwrap();
    assert_eq!(stream, (vec![10], 1));
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(engine.purge(later).await.unwrap(), 1);
    let gone = engine.get_event::<u64>("p", "answer").await;
    assert!(
        matches!(gone, Err(Error::Usage(UsageError::NotFound { .. }))),
        "{gone:?}"
    );

    let handle = engine.start(answerer, "p", 1).await.unwrap();
    wait_status(&engine, "p", true).await;
    assert_eq!(engine.get_event::<u64>("p", "answer").await.unwrap(), None);
    let stream = engine.read_stream::<u64>("p", "answers", 0).await.unwrap();
    assert_eq!(
        stream,
        (vec![], 0),
        "the old stream went with the purged instance"
    );
    assert!(
        engine
            .send_event_with_key("p", "question", 6u64, "k")
            .await
            .unwrap(),
        "the old key went with the purged instance"
    );
    let out = support::guarded("the new instance completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(6));
    engine.shutdown().await;
}
