//! Cron schedules: each tick starts one instance (`sched:{name}:{tick}`)
//! exactly once, across a reopen of the store and across a SIGKILL of a
//! real child process; ticks missed while no engine ran are run or skipped
//! per the schedule's policy; schedules are paused, resumed and removed at
//! run time; a bad cron expression is a typed error.
//!
//! Time is a `ManualClock` given to the engine: the tests move it and wait
//! for instances to appear (conditions under the hang guard), never for
//! the wall clock.

mod support;

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use durable::cron::CronError;
use durable::prelude::*;
use durable::testing::TestEngine;
use durable::time::{Clock, ManualClock};
use durable::{ListFilter, Missed, Schedule, Status, StatusKind, Tick};

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;
const MIN: u64 = 60_000;

#[durable]
async fn on_tick(ctx: &Ctx, tick: Tick) -> Result<u64, String> {
    let at = tick.at_ms;
    step!("record", async { Ok::<_, String>(at) }.await)?;
    let _ = ctx;
    Ok(at)
}

fn clock_at(ms: u64) -> ManualClock {
    ManualClock::new(UNIX_EPOCH + Duration::from_millis(ms))
}

async fn open(dir: &Path, clock: &ManualClock) -> Engine {
    Engine::builder()
        .path(dir)
        .clock(clock.clone())
        .register(on_tick)
        .open()
        .await
        .unwrap()
}

/// Every instance of `on_tick` whose id starts with `prefix`: (id, status).
async fn instances(engine: &Engine, prefix: &str) -> Vec<(String, StatusKind)> {
    let mut out = Vec::new();
    let mut filter = ListFilter::new().workflow("on_tick").limit(500);
    loop {
        let page = engine.list(&filter).await.unwrap();
        out.extend(
            page.instances
                .iter()
                .filter(|i| i.id.starts_with(prefix))
                .map(|i| (i.id.clone(), i.status.kind())),
        );
        match page.next {
            Some(next) => filter = filter.after(next),
            None => break,
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The ids of ticks `ticks` of schedule `name`.
fn tick_ids(name: &str, ticks: impl IntoIterator<Item = u64>) -> Vec<String> {
    let mut ids: Vec<String> = ticks
        .into_iter()
        .map(|t| format!("sched:{name}:{t}"))
        .collect();
    ids.sort();
    ids
}

/// Waits until the completed instances of schedule `name` are exactly `ids`.
async fn wait_completed(engine: &Engine, name: &str, ids: &[String]) {
    let prefix = format!("sched:{name}:");
    support::wait_until(&format!("the ticks of {name}: {ids:?}"), async || {
        let found = instances(engine, &prefix).await;
        let done: Vec<String> = found
            .iter()
            .filter(|(_, s)| *s == StatusKind::Completed)
            .map(|(id, _)| id.clone())
            .collect();
        if done == ids && found.len() == ids.len() {
            Ok(())
        } else {
            Err(found)
        }
    })
    .await
}

#[tokio::test]
async fn each_tick_fires_once_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_at(T0);
    let engine = open(dir.path(), &clock).await;
    let every5 = || Schedule::new("every5", "*/5 * * * *").unwrap();
    engine.add_schedule(on_tick, every5()).await.unwrap();
    // Adding it again (every worker does at start-up) changes nothing.
    engine.add_schedule(on_tick, every5()).await.unwrap();
    clock.advance(Duration::from_millis(5 * MIN));
    wait_completed(&engine, "every5", &tick_ids("every5", [T0 + 5 * MIN])).await;
    let out = engine
        .attach(on_tick, format!("sched:every5:{}", T0 + 5 * MIN))
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(out, Ok(T0 + 5 * MIN), "the tick's time is the input");
    engine.shutdown().await;

    let engine = open(dir.path(), &clock).await;
    engine.add_schedule(on_tick, every5()).await.unwrap();
    clock.advance(Duration::from_millis(5 * MIN));
    wait_completed(
        &engine,
        "every5",
        &tick_ids("every5", [T0 + 5 * MIN, T0 + 10 * MIN]),
    )
    .await;
    let listed = engine.schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_tick_ms, T0 + 10 * MIN);
    assert_eq!(listed[0].next_tick_ms, Some(T0 + 15 * MIN));
    engine.shutdown().await;
}

#[tokio::test]
async fn missed_ticks_run_or_are_skipped_per_policy() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_at(T0);
    let engine = open(dir.path(), &clock).await;
    for (name, missed) in [
        ("all", Missed::RunAll),
        ("latest", Missed::RunLatest),
        ("skip", Missed::Skip),
    ] {
        let s = Schedule::new(name, "*/5 * * * *").unwrap().missed(missed);
        engine.add_schedule(on_tick, s).await.unwrap();
    }
    engine.shutdown().await;
    // Down for an hour and two minutes: ticks 5..60 pass unfired; the last
    // is two minutes old when the engine comes back (beyond Skip's grace).
    clock.advance(Duration::from_millis(62 * MIN));
    let engine = open(dir.path(), &clock).await;
    wait_completed(
        &engine,
        "all",
        &tick_ids("all", (1..=12).map(|i| T0 + i * 5 * MIN)),
    )
    .await;
    wait_completed(&engine, "latest", &tick_ids("latest", [T0 + 60 * MIN])).await;
    // The next tick fires on time for every policy; Skip ran nothing else.
    clock.advance(Duration::from_millis(3 * MIN));
    wait_completed(
        &engine,
        "latest",
        &tick_ids("latest", [T0 + 60 * MIN, T0 + 65 * MIN]),
    )
    .await;
    wait_completed(&engine, "skip", &tick_ids("skip", [T0 + 65 * MIN])).await;
    wait_completed(
        &engine,
        "all",
        &tick_ids("all", (1..=13).map(|i| T0 + i * 5 * MIN)),
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn schedules_are_paused_resumed_and_removed_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_at(T0);
    let engine = open(dir.path(), &clock).await;
    // "zz" sorts after "job": once its tick fired, the round looked at "job".
    for name in ["job", "zz"] {
        let s = Schedule::new(name, "*/5 * * * *").unwrap();
        engine.add_schedule(on_tick, s).await.unwrap();
    }
    engine.pause_schedule("job").await.unwrap();
    let listed = engine.schedules().await.unwrap();
    assert!(listed.iter().any(|s| s.name == "job" && s.paused));
    clock.advance(Duration::from_millis(5 * MIN));
    wait_completed(&engine, "zz", &tick_ids("zz", [T0 + 5 * MIN])).await;
    assert_eq!(instances(&engine, "sched:job:").await, vec![]);

    // Resumed: the tick that passed while paused does not fire, the next does.
    engine.resume_schedule("job").await.unwrap();
    clock.advance(Duration::from_millis(5 * MIN));
    wait_completed(&engine, "job", &tick_ids("job", [T0 + 10 * MIN])).await;

    engine.remove_schedule("job").await.unwrap();
    clock.advance(Duration::from_millis(5 * MIN));
    wait_completed(
        &engine,
        "zz",
        &tick_ids("zz", [5, 10, 15].map(|m| T0 + m * MIN)),
    )
    .await;
    wait_completed(&engine, "job", &tick_ids("job", [T0 + 10 * MIN])).await;
    assert_eq!(engine.schedules().await.unwrap().len(), 1);
    for err in [
        engine.pause_schedule("job").await,
        engine.resume_schedule("nope").await,
        engine.remove_schedule("job").await,
    ] {
        assert!(
            matches!(err, Err(Error::Usage(UsageError::NoSuchSchedule { .. }))),
            "{err:?}"
        );
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn the_test_kit_drives_ticks() {
    let kit = TestEngine::open(Engine::builder().register(on_tick))
        .await
        .unwrap();
    assert_eq!(kit.clock().now_ms(), T0);
    let s = Schedule::new("kit", "*/5 * * * *").unwrap();
    kit.add_schedule(on_tick, s).await.unwrap();
    for i in 1..=3 {
        kit.advance(Duration::from_millis(5 * MIN)).await;
        // `advance` returned once idle: the tick's instance has finished.
        let id = format!("sched:kit:{}", T0 + i * 5 * MIN);
        let status = kit.status(&id).await.unwrap();
        assert!(
            matches!(status, Status::Completed { .. }),
            "{id}: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_bad_cron_expression_is_a_typed_error() {
    for (expr, want) in [
        ("*/0 * * * *", "syntax"),
        ("0 24 * * *", "range"),
        ("* * * *", "count"),
        ("0 0 31 2 *", "never"),
    ] {
        let err = Schedule::new("bad", expr).unwrap_err();
        let Error::Usage(UsageError::InvalidCron { error, .. }) = &err else {
            panic!("{expr}: {err:?}");
        };
        let kind = match error {
            CronError::Syntax { .. } => "syntax",
            CronError::OutOfRange { .. } => "range",
            CronError::FieldCount { .. } => "count",
            CronError::Never => "never",
            other => panic!("{other:?}"),
        };
        assert_eq!(kind, want, "{expr}: {err}");
    }
    assert!(matches!(
        Schedule::new("", "* * * * *"),
        Err(Error::Usage(UsageError::InvalidId { .. }))
    ));
}

// ------------------------------------------------ a SIGKILL while ticking

const CHILD_ENV: &str = "DURABLE_SCHEDULE_CHILD";

/// The child: a schedule that ticks every second, on a manual clock it
/// moves a second at a time (writing the time it reached to `clock` first),
/// until it is killed.
#[tokio::test]
async fn ticking_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let clock = clock_at(T0);
    let engine = open(&dir.join("store"), &clock).await;
    let s = Schedule::new("secs", "* * * * * *")
        .unwrap()
        .missed(Missed::RunAll);
    engine.add_schedule(on_tick, s).await.unwrap();
    loop {
        let next = clock.now_ms() + 1_000;
        // Written whole or not at all (a rename), before the clock moves.
        std::fs::write(dir.join("clock.tmp"), next.to_string()).unwrap();
        std::fs::rename(dir.join("clock.tmp"), dir.join("clock")).unwrap();
        clock.advance(Duration::from_secs(1));
        // Wait (briefly) for the tick, so the kill lands among firings.
        let id = format!("sched:secs:{next}");
        for _ in 0..50 {
            if engine.status(&id).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test]
async fn each_tick_fires_once_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = support::test_process("ticking_child")
        .env(CHILD_ENV, dir.path())
        .spawn()
        .unwrap();
    let clock_file = dir.path().join("clock");
    support::wait_until("the child to pass 40 ticks", async || {
        let reached = std::fs::read_to_string(&clock_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if reached >= T0 + 40_000 {
            Ok(())
        } else if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended first: {status}");
        } else {
            Err(reached)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let reached: u64 = std::fs::read_to_string(&clock_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // Back five seconds later: every tick up to then has one instance,
    // each run to its end (RunAll fires those the kill left unfired).
    let end = reached + 5_000;
    let clock = clock_at(end);
    let engine = open(&dir.path().join("store"), &clock).await;
    let want = tick_ids("secs", (1..=(end - T0) / 1_000).map(|i| T0 + i * 1_000));
    wait_completed(&engine, "secs", &want).await;
    engine.shutdown().await;
}

/// Gives up after a minute (its own deadline), sleeping two.
#[durable(timeout = "1m")]
async fn slow_tick(_ctx: &Ctx, tick: Tick) -> Result<u64, String> {
    sleep!("nap", Duration::from_secs(120));
    Ok(tick.at_ms)
}

/// A tick's instance gets its workflow's own deadline
/// (`#[durable(timeout)]`), counted from the tick's start.
#[tokio::test]
async fn a_ticks_instance_keeps_its_workflows_own_deadline() {
    let kit = TestEngine::open(Engine::builder().register(slow_tick))
        .await
        .unwrap();
    let s = Schedule::new("slow", "*/5 * * * *").unwrap();
    kit.add_schedule(slow_tick, s).await.unwrap();
    kit.advance(Duration::from_millis(5 * MIN)).await;
    let id = format!("sched:slow:{}", T0 + 5 * MIN);
    kit.advance(Duration::from_secs(61)).await;
    let history = kit.history(&id).await.unwrap();
    assert!(matches!(history.status, Status::Cancelled), "{history:?}");
    assert!(
        history
            .transitions
            .iter()
            .any(|t| matches!(t.kind, durable::TransitionKind::DeadlinePassed { .. })),
        "{:?}",
        history.transitions
    );
}
