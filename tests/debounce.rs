//! `Engine::debounce`: calls with one key within the window start one
//! instance, with the last call's input, once the calls stop (or the
//! longest wait passed); a pending start survives a SIGKILL of a real
//! child process between the calls and the start, and fires once.
//!
//! Time is a `ManualClock` given to the engine: the tests move it and wait
//! for instances to appear (conditions under the hang guard).

mod support;

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use durable::prelude::*;
use durable::time::ManualClock;
use durable::{Debounce, ListFilter, StatusKind};

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

#[durable]
async fn echo(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!("echo", async { Ok::<_, String>(n) }.await)
}

#[durable]
async fn other(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!("other", async { Ok::<_, String>(n) }.await)
}

fn clock_at(ms: u64) -> ManualClock {
    ManualClock::new(UNIX_EPOCH + Duration::from_millis(ms))
}

async fn open(dir: &Path, clock: &ManualClock) -> Engine {
    Engine::builder()
        .path(dir)
        .clock(clock.clone())
        .register(echo)
        .register(other)
        .open()
        .await
        .unwrap()
}

/// The instances whose id starts with `prefix`: (id, status).
async fn instances(engine: &Engine, prefix: &str) -> Vec<(String, StatusKind)> {
    let page = engine.list(&ListFilter::new().limit(1_000)).await.unwrap();
    let mut out: Vec<_> = page
        .instances
        .iter()
        .filter(|i| i.id.starts_with(prefix))
        .map(|i| (i.id.clone(), i.status.kind()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Waits until instance `id` completed and returns its output.
async fn output(engine: &Engine, id: &str) -> u64 {
    support::wait_until(&format!("{id} to complete"), async || {
        match instances(engine, id).await.as_slice() {
            [(found, StatusKind::Completed)] if found == id => Ok(()),
            other => Err(other.to_vec()),
        }
    })
    .await;
    let handle = engine.attach(echo, id).await.unwrap();
    handle.result().await.unwrap().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test]
async fn calls_within_the_window_start_one_instance_with_the_last_input() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_at(T0);
    let engine = open(dir.path(), &clock).await;
    let window = Debounce::new(secs(10));
    let mut ids = Vec::new();
    for n in 1..=5u64 {
        ids.push(engine.debounce(echo, "k", n, window).await.unwrap());
        clock.advance(secs(5));
    }
    assert!(ids.iter().all(|id| id == "debounce:k:0"), "{ids:?}");
    // A witness due one second before "k": once it ran, "k" was looked at.
    engine
        .debounce(echo, "witness", 0, Debounce::new(secs(4)))
        .await
        .unwrap();
    clock.advance(secs(4));
    assert_eq!(output(&engine, "debounce:witness:0").await, 0);
    assert_eq!(instances(&engine, "debounce:k:").await, vec![]);
    clock.advance(secs(1));
    assert_eq!(output(&engine, "debounce:k:0").await, 5);

    // Another key of another workflow while "k" is pending is refused.
    let id = engine.debounce(echo, "k", 6, window).await.unwrap();
    assert_eq!(id, "debounce:k:1", "a call after the start begins the next");
    let err = engine.debounce(other, "k", 7, window).await.unwrap_err();
    assert!(
        matches!(err, Error::Usage(UsageError::IdConflict { .. })),
        "{err:?}"
    );
    clock.advance(secs(10));
    assert_eq!(output(&engine, "debounce:k:1").await, 6);
    assert_eq!(instances(&engine, "debounce:k:").await.len(), 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn the_longest_wait_starts_it_while_calls_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_at(T0);
    let engine = open(dir.path(), &clock).await;
    let window = Debounce::new(secs(10)).max_wait(secs(30));
    for n in 0..6u64 {
        engine.debounce(echo, "busy", n, window).await.unwrap();
        clock.advance(secs(5));
    }
    // At 30 s: the calls came every 5 s, the longest wait is over.
    assert_eq!(output(&engine, "debounce:busy:0").await, 5);
    let id = engine.debounce(echo, "busy", 9, window).await.unwrap();
    assert_eq!(id, "debounce:busy:1");
    assert!(matches!(
        engine.debounce(echo, "", 1, window).await,
        Err(Error::Usage(UsageError::InvalidId { .. }))
    ));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_pending_debounce_survives_a_restart_and_fires_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_at(T0);
    let engine = open(dir.path(), &clock).await;
    engine
        .debounce(echo, "r", 1, Debounce::new(secs(60)))
        .await
        .unwrap();
    engine
        .debounce(echo, "r", 2, Debounce::new(secs(60)))
        .await
        .unwrap();
    engine.shutdown().await;
    clock.advance(secs(120));
    let engine = open(dir.path(), &clock).await;
    assert_eq!(output(&engine, "debounce:r:0").await, 2);
    engine.shutdown().await;
    let engine = open(dir.path(), &clock).await;
    clock.advance(secs(120));
    engine
        .debounce(echo, "w", 0, Debounce::new(secs(1)))
        .await
        .unwrap();
    clock.advance(secs(1));
    assert_eq!(output(&engine, "debounce:w:0").await, 0);
    assert_eq!(instances(&engine, "debounce:r:").await.len(), 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn the_test_kit_drives_debounces() {
    let kit = durable::testing::TestEngine::open(Engine::builder().register(echo))
        .await
        .unwrap();
    for n in 1..=3u64 {
        kit.debounce(echo, "kit", n, Debounce::new(secs(10)))
            .await
            .unwrap();
    }
    kit.advance(secs(10)).await;
    // `advance` returned once idle: the instance has finished.
    let status = kit.status("debounce:kit:0").await.unwrap();
    assert!(
        matches!(status, durable::Status::Completed { .. }),
        "{status:?}"
    );
    let out = kit
        .attach(echo, "debounce:kit:0")
        .await
        .unwrap()
        .result()
        .await;
    assert_eq!(out.unwrap(), Ok(3));
}

// ------------------------------------------------ a SIGKILL between calls

const CHILD_ENV: &str = "DURABLE_DEBOUNCE_CHILD";

/// The child: calls `debounce` with 0, 1, 2, … (a minute's window on a
/// clock that never moves, so nothing fires here), writing each number
/// after its call returned, until it is killed.
#[tokio::test]
async fn debouncing_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let clock = clock_at(T0);
    let engine = open(&dir.join("store"), &clock).await;
    for n in 0u64.. {
        let id = engine
            .debounce(echo, "killed", n, Debounce::new(secs(60)))
            .await
            .unwrap();
        assert_eq!(id, "debounce:killed:0");
        std::fs::write(dir.join("n.tmp"), n.to_string()).unwrap();
        std::fs::rename(dir.join("n.tmp"), dir.join("n")).unwrap();
    }
}

#[tokio::test]
async fn a_debounce_pending_across_a_sigkill_fires_once_with_the_last_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = support::test_process("debouncing_child")
        .env(CHILD_ENV, dir.path())
        .spawn()
        .unwrap();
    let n_file = dir.path().join("n");
    let read = || {
        std::fs::read_to_string(&n_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    support::wait_until("the child to make 50 calls", async || match read() {
        Some(n) if n >= 50 => Ok(()),
        other => match child.try_wait() {
            Ok(Some(status)) => panic!("the child ended first: {status}"),
            _ => Err(other),
        },
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let last = read().unwrap();

    let clock = clock_at(T0 + 61_000);
    let engine = open(&dir.path().join("store"), &clock).await;
    let got = output(&engine, "debounce:killed:0").await;
    // The last call that returned is durable; one more may have landed.
    assert!(got == last || got == last + 1, "{got} after {last}");
    // Reopened again: nothing fires twice.
    engine.shutdown().await;
    let engine = open(&dir.path().join("store"), &clock).await;
    engine
        .debounce(echo, "witness", 0, Debounce::new(secs(1)))
        .await
        .unwrap();
    clock.advance(secs(1));
    assert_eq!(output(&engine, "debounce:witness:0").await, 0);
    assert_eq!(
        instances(&engine, "debounce:killed:").await,
        vec![("debounce:killed:0".to_string(), StatusKind::Completed)]
    );
    engine.shutdown().await;
}
