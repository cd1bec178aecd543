//! Schedules and debouncing on PostgreSQL, with several engines on one
//! schema: every tick starts one instance whose body runs once, whichever
//! engine sees the tick first (two engines in this process on one manual
//! clock; then two worker processes on the wall clock, one of them killed
//! with SIGKILL while ticking), and debounce calls from two engines start
//! one instance with the last input.
//!
//! `cargo test --features postgres --test pg_schedules`. Needs PostgreSQL
//! (`DURABLE_TEST_PG`); without it the tests pass after saying "skipped: no
//! PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use durable::prelude::*;
use durable::time::ManualClock;
use durable::{Debounce, Missed, Schedule, Status, Tick};

use support::pg::Schema;

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;
const MIN: u64 = 60_000;

/// Body runs by instance id (this process).
static RUNS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn count(id: &str) {
    *RUNS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(id.to_string())
        .or_default() += 1;
}

fn runs(id: &str) -> u32 {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(id).copied())
        .unwrap_or(0)
}

/// The ledger directory of a worker process (unset in this process).
const CHILD_ENV: &str = "DURABLE_PG_SCHEDULE_CHILD";
const SCHEMA_ENV: &str = "DURABLE_PG_SCHEDULE_SCHEMA";

#[durable]
async fn on_tick(ctx: &Ctx, tick: Tick) -> Result<u64, String> {
    let id = ctx.id().to_string();
    step!(
        "record",
        async {
            match std::env::var_os(CHILD_ENV) {
                Some(dir) => support::ledger_in(dir, &format!("RUN {id}")),
                None => count(&id),
            }
            Ok::<_, String>(tick.at_ms)
        }
        .await
    )
}

#[durable]
async fn summed(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let id = ctx.id().to_string();
    step!(
        "sum",
        async {
            count(&id);
            Ok::<_, String>(n)
        }
        .await
    )
}

async fn completed(engine: &Engine, id: &str) {
    support::wait_until(&format!("{id} to complete"), async || {
        match engine.status(id).await {
            Ok(Status::Completed { .. }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test]
async fn two_engines_fire_each_tick_and_debounce_once() {
    let Some(schema) = Schema::new("durable_sched").await else {
        return;
    };
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_millis(T0));
    let open = || {
        schema
            .builder_with(true)
            .clock(clock.clone())
            .register(on_tick)
            .register(summed)
            .open()
    };
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    for engine in [&a, &b] {
        let s = Schedule::new("minutely", "* * * * *").unwrap();
        engine.add_schedule(on_tick, s).await.unwrap();
    }
    for i in 1..=10 {
        clock.advance(Duration::from_millis(MIN));
        completed(&a, &format!("sched:minutely:{}", T0 + i * MIN)).await;
    }
    for i in 1..=10 {
        let id = format!("sched:minutely:{}", T0 + i * MIN);
        assert_eq!(runs(&id), 1, "{id}");
    }
    // Debounce calls alternate between the engines: one instance, the
    // last input.
    let window = Debounce::new(Duration::from_secs(30));
    for n in 1..=6u64 {
        let engine = if n % 2 == 0 { &a } else { &b };
        let id = engine.debounce(summed, "shared", n, window).await.unwrap();
        assert_eq!(id, "debounce:shared:0");
    }
    clock.advance(Duration::from_secs(30));
    completed(&b, "debounce:shared:0").await;
    let out = a
        .attach(summed, "debounce:shared:0")
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(out, Ok(6));
    assert_eq!(runs("debounce:shared:0"), 1);
    // The next tick: still once, and the listing shows where it is.
    clock.advance(Duration::from_millis(MIN));
    completed(&b, &format!("sched:minutely:{}", T0 + 11 * MIN)).await;
    let listed = b.schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_tick_ms >= T0 + 11 * MIN);
    a.shutdown().await;
    b.shutdown().await;
    schema.drop_schema().await;
}

/// A worker process: runs `on_tick` on the wall clock for the schedule
/// that ticks every second, until it is killed.
#[tokio::test]
async fn schedule_worker_child() {
    let (Some(_), Ok(schema)) = (std::env::var_os(CHILD_ENV), std::env::var(SCHEMA_ENV)) else {
        return;
    };
    let engine = support::pg::builder_on(&schema, true)
        .register(on_tick)
        .open()
        .await
        .unwrap();
    let s = Schedule::new("secs", "* * * * * *")
        .unwrap()
        .missed(Missed::RunAll);
    engine.add_schedule(on_tick, s).await.unwrap();
    std::future::pending::<()>().await;
}

fn spawn_worker(dir: &std::path::Path, schema: &str) -> std::process::Child {
    support::test_process("schedule_worker_child")
        .env(CHILD_ENV, dir)
        .env(SCHEMA_ENV, schema)
        .spawn()
        .unwrap()
}

/// (tick, body runs) of every `RUN` line of the ledger, by tick.
fn ledger_runs(dir: &std::path::Path) -> std::collections::BTreeMap<u64, u32> {
    let mut runs = std::collections::BTreeMap::new();
    for line in support::read_ledger(dir) {
        if let Some(t) = line.strip_prefix("RUN sched:secs:") {
            *runs.entry(t.parse::<u64>().unwrap()).or_default() += 1;
        }
    }
    runs
}

#[tokio::test]
async fn two_worker_processes_fire_each_tick_once_through_a_sigkill() {
    let Some(schema) = Schema::new("durable_sched_proc").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn_worker(dir.path(), &schema.name);
    let mut second = spawn_worker(dir.path(), &schema.name);
    let ticks = |n: usize| {
        let dir = dir.path().to_path_buf();
        async move {
            support::wait_until(&format!("{n} ticks in the ledger"), async || {
                let runs = ledger_runs(&dir);
                if runs.len() >= n {
                    Ok(())
                } else {
                    Err(runs.len())
                }
            })
            .await
        }
    };
    ticks(3).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let before_kill = ledger_runs(dir.path());
    ticks(before_kill.len() + 3).await;

    // Stop the ticks, then every tick up to the last one passed must have
    // run (the survivor takes over what the killed worker held).
    let client = schema.builder().open().await.unwrap();
    client.pause_schedule("secs").await.unwrap();
    let last = client.schedules().await.unwrap()[0].last_tick_ms;
    let first_seen = *before_kill.keys().next().unwrap();
    for t in (first_seen..=last).step_by(1_000) {
        completed(&client, &format!("sched:secs:{t}")).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let runs = ledger_runs(dir.path());
    let start = *runs.keys().next().unwrap();
    let want: Vec<u64> = (start..=last).step_by(1_000).collect();
    let got: Vec<u64> = runs.keys().copied().filter(|t| *t <= last).collect();
    assert_eq!(got, want, "one instance per tick, none missing");
    for (t, n) in &runs {
        // A body may run again only if the kill caught it before its
        // checkpoint: an instance the killed worker had begun.
        assert!(
            *n == 1 || (*n == 2 && before_kill.contains_key(t)),
            "tick {t} ran {n} times"
        );
    }
    client.shutdown().await;
    schema.drop_schema().await;
}
