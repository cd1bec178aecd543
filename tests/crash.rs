//! Guards exactly-once progress across a real `kill -9`: a child process runs
//! a workflow whose step bodies log BEGIN/END lines to an fsynced ledger
//! outside the store; the test SIGKILLs the child while a step body is in
//! flight, restarts it, and checks from the ledger that finished steps never
//! ran again, the killed step ran again, and the result is right.
//!
//! The child is this same test binary, re-run with `--exact` on the
//! `crash_child` test and the `DURABLE_CRASH_CHILD` environment variable.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use durable::prelude::*;

const CHILD_ENV: &str = "DURABLE_CRASH_CHILD";

fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("ledger.txt")
}

/// Appends one line to the ledger and fsyncs it.
fn ledger(line: String) {
    let dir = PathBuf::from(std::env::var(CHILD_ENV).expect("child env"));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger_path(&dir))
        .unwrap();
    writeln!(file, "{line}").unwrap();
    file.sync_data().unwrap();
}

async fn work(step: &str, input: u64) -> Result<u64, String> {
    ledger(format!("BEGIN {step} {input}"));
    if std::env::var("DURABLE_CRASH_HANG").as_deref() == Ok(step) {
        // Stay in flight until the parent kills us.
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    let out = input * 3 + 1;
    ledger(format!("END {step} {out}"));
    Ok(out)
}

#[durable]
async fn chain(_ctx: &Ctx, seed: u64) -> Result<u64, String> {
    let a = step!("a", work("a", seed).await)?;
    let b = step!("b", work("b", a).await)?;
    let c = step!("c", work("c", b).await)?;
    let d = step!("d", work("d", c).await)?;
    Ok(d)
}

/// Runs in the child process only.
#[tokio::test]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let engine = Engine::builder()
        .path(Path::new(&dir).join("store"))
        .register(chain)
        .open()
        .await
        .unwrap();
    let out = engine.run(chain, "chain-1", 5).await.unwrap();
    ledger(format!("RESULT {}", out.unwrap()));
}

fn spawn_child(dir: &Path, hang_at: Option<&str>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "crash_child",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD_ENV, dir)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    match hang_at {
        Some(step) => cmd.env("DURABLE_CRASH_HANG", step),
        None => cmd.env_remove("DURABLE_CRASH_HANG"),
    };
    cmd.spawn().unwrap()
}

fn read_ledger(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(ledger_path(dir))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_for_line(dir: &Path, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_ledger(dir).iter().any(|l| l == line) {
        assert!(
            Instant::now() < deadline,
            "child never wrote {line:?}: {:?}",
            read_ledger(dir)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigkill_mid_step_resumes_without_rerunning_finished_steps() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // a = 16, b = 49, c = 148, d = 445
    let mut child = spawn_child(dir.path(), Some("c"));
    wait_for_line(dir.path(), "BEGIN c 49");
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn_child(dir.path(), None);
    assert!(child.wait().unwrap().success(), "restarted child failed");

    let ledger = read_ledger(dir.path());
    let count = |prefix: &str| ledger.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("BEGIN a"), 1, "finished step a ran again: {ledger:?}");
    assert_eq!(count("BEGIN b"), 1, "finished step b ran again: {ledger:?}");
    assert_eq!(
        count("BEGIN c 49"),
        2,
        "the killed step c must run again, with the same input: {ledger:?}"
    );
    assert_eq!(count("END c"), 1, "{ledger:?}");
    assert_eq!(count("BEGIN d 148"), 1, "{ledger:?}");
    assert_eq!(
        ledger.last().map(String::as_str),
        Some("RESULT 445"),
        "{ledger:?}"
    );
}
