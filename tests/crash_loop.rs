//! Crash loops: guards that a step which kills the process every time it
//! runs does not take the service down forever. A child process (this
//! binary, re-run as `crash_loop_child`) runs an instance whose step calls
//! `abort()`; it is restarted after every crash. The count of resumes
//! without progress is stored before each resume, so after
//! `max_recoveries` of them the next start parks the instance as
//! `NeedsAttention` instead of running it, the child stops crashing, the
//! other instances finish, and `Engine::resume` runs it by hand once the
//! cause is fixed. A step that crashes once and then succeeds is progress:
//! the count starts again, and such an instance is never parked.

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use durable::prelude::*;
use durable::{Status, TransitionKind};
use serde::{Deserialize, Serialize};

const CHILD: &str = "DURABLE_CRASH_LOOP_CHILD";
const MODE: &str = "DURABLE_CRASH_LOOP_MODE";
const MAX_RECOVERIES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Job {
    /// The test directory: ledger and crash markers.
    dir: String,
    n: u64,
}

/// Appends a line to the test directory's ledger and fsyncs it.
fn note(dir: &str, line: String) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(dir).join("ledger.txt"))
        .unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
    file.sync_data().unwrap();
}

fn ledger(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("ledger.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn begun(dir: &Path, id: &str, step: &str) -> usize {
    let prefix = format!("BEGIN {id} {step}");
    ledger(dir).iter().filter(|l| **l == prefix).count()
}

async fn plain(job: &Job, id: &str, step: &str, input: u64) -> Result<u64, String> {
    note(&job.dir, format!("BEGIN {id} {step}"));
    Ok(input * 3 + 1)
}

/// Kills the process while `dir/crash` exists.
async fn boom(job: &Job, id: &str, input: u64) -> Result<u64, String> {
    note(&job.dir, format!("BEGIN {id} boom"));
    if Path::new(&job.dir).join("crash").exists() {
        std::process::abort();
    }
    Ok(input + 1)
}

/// Kills the process the first time each step runs, then succeeds.
async fn stumble(job: &Job, id: &str, step: u32, input: u64) -> Result<u64, String> {
    note(&job.dir, format!("BEGIN {id} stumble-{step}"));
    let marker = Path::new(&job.dir).join(format!("stumbled-{step}"));
    if !marker.exists() {
        std::fs::File::create(&marker).unwrap().sync_all().unwrap();
        std::process::abort();
    }
    Ok(input * 2)
}

#[durable]
async fn fragile(ctx: &Ctx, job: Job) -> Result<u64, String> {
    let a = step!("before", plain(&job, ctx.id(), "before", job.n).await)?;
    let b = step!("boom", boom(&job, ctx.id(), a).await)?;
    step!("after", plain(&job, ctx.id(), "after", b).await)
}

#[durable]
async fn steady(ctx: &Ctx, job: Job) -> Result<u64, String> {
    let mut v = job.n;
    for _ in 0..3 {
        v = step!("tick", plain(&job, ctx.id(), "tick", v).await)?;
    }
    Ok(v)
}

#[durable]
async fn stumbling(ctx: &Ctx, job: Job) -> Result<u64, String> {
    let mut v = job.n;
    for step in 0..5 {
        v = step!("stumble", stumble(&job, ctx.id(), step, v).await)?;
    }
    Ok(v)
}

fn job(dir: &Path, n: u64) -> Job {
    Job {
        dir: dir.display().to_string(),
        n,
    }
}

async fn open(dir: &Path) -> Engine {
    Engine::builder()
        .path(dir.join("store"))
        .register(fragile)
        .register(steady)
        .register(stumbling)
        .max_recoveries(MAX_RECOVERIES)
        .open()
        .await
        .unwrap()
}

/// Runs in the child only: starts (or attaches to) the mode's instances
/// and records how each ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_child() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let engine = open(&dir).await;
    let d = dir.display().to_string();
    let outcome = |r: durable::Result<Result<u64, String>>| match r {
        Ok(Ok(v)) => format!("ok {v}"),
        Ok(Err(e)) => format!("err {e}"),
        Err(Error::Instance(InstanceError::NeedsAttention { .. })) => "needs-attention".to_string(),
        Err(e) => format!("error {e}"),
    };
    match std::env::var(MODE).as_deref() {
        Ok("loop") => {
            let looping = engine.start(fragile, "loop-1", job(&dir, 1)).await.unwrap();
            let healthy = engine.start(steady, "ok-1", job(&dir, 2)).await.unwrap();
            note(
                &d,
                format!("RESULT ok-1 {}", outcome(healthy.result().await)),
            );
            note(
                &d,
                format!("RESULT loop-1 {}", outcome(looping.result().await)),
            );
        }
        Ok("stumble") => {
            let r = engine.run(stumbling, "stumble-1", job(&dir, 1)).await;
            note(&d, format!("RESULT stumble-1 {}", outcome(r)));
        }
        other => panic!("unknown mode {other:?}"),
    }
    engine.shutdown().await;
}

#[derive(Debug, PartialEq, Eq)]
enum Exit {
    Clean,
    Crashed,
}

fn run_child(dir: &Path, mode: &str) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_loop_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, dir)
        .env(MODE, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = support::wait_child(&mut child, "the child's exit", support::hang_guard())
        .unwrap_or_else(|hang| panic!("{hang}: {:?}", ledger(dir)));
    match (status.success(), status.signal()) {
        (true, _) => Exit::Clean,
        (false, Some(libc::SIGABRT)) => Exit::Crashed,
        _ => panic!("the child failed: {status}"),
    }
}

/// Restarts the child after every crash, as a supervisor would, until it
/// exits cleanly; returns the number of crashes.
fn supervise(dir: &Path, mode: &str) -> usize {
    for crashes in 0..30 {
        if run_child(dir, mode) == Exit::Clean {
            return crashes;
        }
    }
    panic!("still crashing after 30 restarts: {:?}", ledger(dir));
}

#[tokio::test]
async fn a_step_that_always_kills_the_process_is_parked_and_resumed_by_hand() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("crash"), b"").unwrap();

    // The first run and MAX_RECOVERIES resumes crash; the next start parks.
    let crashes = supervise(dir, "loop");
    assert_eq!(crashes as u32, 1 + MAX_RECOVERIES, "{:?}", ledger(dir));
    assert_eq!(begun(dir, "loop-1", "boom"), crashes);
    assert_eq!(begun(dir, "loop-1", "before"), 1);
    let lines = ledger(dir);
    assert!(
        lines.contains(&"RESULT loop-1 needs-attention".to_string()),
        "{lines:?}"
    );
    // The other instance is not held hostage.
    assert!(
        lines.iter().any(|l| l.starts_with("RESULT ok-1 ok")),
        "{lines:?}"
    );

    // Parked for good: a restart neither crashes nor runs it.
    assert_eq!(run_child(dir, "loop"), Exit::Clean);
    assert_eq!(begun(dir, "loop-1", "boom"), crashes);
    {
        let engine = open(dir).await;
        let skipped = &engine.recovery().skipped;
        assert!(
            skipped
                .iter()
                .any(|(id, why)| id == "loop-1" && why.contains("needs attention")),
            "{skipped:?}"
        );
        match engine.status("loop-1").await.unwrap() {
            Status::NeedsAttention { reason } => {
                assert!(reason.contains("Engine::resume"), "{reason}")
            }
            other => panic!("expected NeedsAttention, got {other:?}"),
        }
        let history = engine.history("loop-1").await.unwrap();
        assert!(
            history
                .transitions
                .iter()
                .any(|t| matches!(t.kind, TransitionKind::NeedsAttention { .. })),
            "{history:?}"
        );
        engine.shutdown().await;
    }

    // The cause is fixed; resumed by hand, it finishes from where it was.
    std::fs::remove_file(dir.join("crash")).unwrap();
    let engine = open(dir).await;
    let handle = engine.resume(fragile, "loop-1").await.unwrap();
    // before: 1 * 3 + 1 = 4; boom: 4 + 1 = 5; after: 5 * 3 + 1 = 16.
    assert_eq!(handle.result().await.unwrap(), Ok(16));
    assert!(matches!(
        engine.status("loop-1").await.unwrap(),
        Status::Completed { .. }
    ));
    engine.shutdown().await;
    assert_eq!(begun(dir, "loop-1", "before"), 1);
    assert_eq!(begun(dir, "loop-1", "boom"), crashes + 1);
    assert_eq!(begun(dir, "loop-1", "after"), 1);
}

#[tokio::test]
async fn a_crash_followed_by_progress_starts_the_count_again() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Five crashes in a row, more than MAX_RECOVERIES, but each resume
    // finishes a step.
    let crashes = supervise(dir, "stumble");
    assert_eq!(crashes, 5, "{:?}", ledger(dir));
    let lines = ledger(dir);
    assert!(
        lines.contains(&"RESULT stumble-1 ok 32".to_string()),
        "{lines:?}"
    );
    for step in 0..5 {
        assert_eq!(begun(dir, "stumble-1", &format!("stumble-{step}")), 2);
    }
}
