//! Guards exactly-once progress across a real `kill -9`: a child process runs
//! a workflow whose step bodies log BEGIN/END lines to an fsynced ledger
//! outside the store; the test SIGKILLs the child while a step body is in
//! flight, restarts it, and checks from the ledger that finished steps never
//! ran again, the killed step ran again, and the result is right.
//!
//! The child is this same test binary, re-run with `--exact` on the
//! `crash_child` test and the `DURABLE_CRASH_CHILD` environment variable.

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    // One write per line, so concurrent appenders do not interleave. A kill
    // can still tear a write: each line starts on a fresh line and ends with
    // ` $`, so a torn one is recognised and left out.
    file.write_all(format!("\n{line} $\n").as_bytes()).unwrap();
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
        .filter_map(|l| l.strip_suffix(" $"))
        .map(str::to_string)
        .collect()
}

fn wait_for_line(dir: &Path, line: &str) {
    support::wait_until_blocking(&format!("the child's ledger line {line:?}"), || {
        let ledger = read_ledger(dir);
        if ledger.iter().any(|l| l == line) {
            Ok(())
        } else {
            Err(ledger)
        }
    });
}

/// Waits for `child` to exit by itself, under the hang guard.
fn exit_status(child: &mut Child, what: &str) -> std::process::ExitStatus {
    support::wait_child(child, what, support::hang_guard()).unwrap_or_else(|hang| panic!("{hang}"))
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
    assert!(
        exit_status(&mut child, "the restarted child's exit").success(),
        "restarted child failed"
    );

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

/// Steps per instance and instances of the load test.
const LOAD_STEPS: u64 = 12;
const LOAD_INSTANCES: u64 = 64;

async fn load_work(id: &str, step: u64, input: u64) -> Result<u64, String> {
    // The output depends on the attempt (a per-process nonce), so a step that
    // ran twice shows up as two different values.
    let nonce = std::process::id() as u64;
    ledger(format!("BEGIN {id} {step} {input}"));
    Ok(input
        .wrapping_mul(31)
        .wrapping_add(step * 1_000_003 + nonce))
}

#[durable]
async fn load(ctx: &Ctx, seed: u64) -> Result<u64, String> {
    let mut value = seed;
    for step in 0..LOAD_STEPS {
        value = step!("work", load_work(ctx.id(), step, value).await)?;
        // Written only after `step!` returned: this checkpoint must survive.
        ledger(format!("RETURNED {} {step} {value}", ctx.id()));
    }
    Ok(value)
}

/// Runs in the child process only: many instances at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    if std::env::var("DURABLE_LOAD").is_err() {
        return;
    }
    let engine = Engine::builder()
        .path(Path::new(&dir).join("store"))
        .register(load)
        .open()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..LOAD_INSTANCES {
        handles.push(engine.start(load, format!("load-{i}"), i).await.unwrap());
    }
    for h in handles {
        h.result().await.unwrap().unwrap();
    }
    ledger("DONE".into());
}

#[test]
fn sigkill_under_concurrent_load_loses_no_returned_step() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "load_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("DURABLE_LOAD", "1")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Kill three times while steps are returning, at growing ledger sizes.
    for kill_at in [40, 300, 500] {
        let mut child = spawn();
        support::wait_until_blocking(&format!("{kill_at} returned steps"), || {
            let ledger = read_ledger(dir.path());
            let returned = ledger.iter().filter(|l| l.starts_with("RETURNED")).count();
            if returned >= kill_at || ledger.iter().any(|l| l == "DONE") {
                Ok(())
            } else {
                Err(format!("{returned} returned steps"))
            }
        });
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut child = spawn();
    assert!(
        exit_status(&mut child, "the final child's exit").success(),
        "final child failed"
    );
    let ledger = read_ledger(dir.path());
    assert_eq!(ledger.last().map(String::as_str), Some("DONE"));

    // Every step that returned kept its value: the next step of the same
    // instance began with it, and no returned step's body ran again.
    let mut returned: std::collections::HashMap<(String, u64), u64> = Default::default();
    let mut begins: std::collections::HashMap<(String, u64), Vec<u64>> = Default::default();
    for line in &ledger {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["RETURNED", id, step, value] => {
                let key = (id.to_string(), step.parse().unwrap());
                let value: u64 = value.parse().unwrap();
                if let Some(old) = returned.insert(key.clone(), value) {
                    assert_eq!(old, value, "step {key:?} returned two different values");
                }
            }
            ["BEGIN", id, step, input] => {
                begins
                    .entry((id.to_string(), step.parse().unwrap()))
                    .or_default()
                    .push(input.parse().unwrap());
            }
            _ => {}
        }
    }
    let mut checked = 0;
    for ((id, step), value) in &returned {
        let next = begins.get(&(id.clone(), step + 1));
        if *step + 1 < LOAD_STEPS {
            let next = next.unwrap_or_else(|| panic!("{id} step {} never began", step + 1));
            assert!(
                next.iter().all(|input| input == value),
                "{id} step {}: inputs {next:?}, but step {step} returned {value}",
                step + 1
            );
        }
        checked += 1;
    }
    // Bodies that began after the step had returned would show as a second
    // BEGIN with the same input after the RETURNED line.
    for (key, inputs) in &begins {
        if returned.contains_key(key) {
            let first_return = ledger
                .iter()
                .position(|l| l.starts_with(&format!("RETURNED {} {} ", key.0, key.1)))
                .unwrap();
            let begins_after = ledger[first_return..]
                .iter()
                .filter(|l| l.starts_with(&format!("BEGIN {} {} ", key.0, key.1)))
                .count();
            assert_eq!(
                begins_after, 0,
                "{key:?} ran again after it returned ({inputs:?})"
            );
        }
    }
    assert_eq!(checked as u64, LOAD_INSTANCES * LOAD_STEPS);
}
