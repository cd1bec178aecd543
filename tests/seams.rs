//! Guards the runtime's seams as a user drives them: an engine on the
//! in-memory store (the embedded store's twin; the engine names no sled
//! type), a manual clock that passes hours of `sleep!`, wait timeouts and
//! retry delays without waiting for them, listings, and status that shows a
//! step in flight and whether a finished workflow returned `Err`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use durable::prelude::*;
use durable::store::MemoryStore;
use durable::time::ManualClock;
use durable::{ListFilter, Status, StatusKind, StepOutcome};
use tokio::sync::Notify;

mod support;

use support::hang_guard;

/// Waits until `done` holds, under the suite's hang guard.
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    support::wait_until(
        what,
        async || if done().await { Ok(()) } else { Err("not yet") },
    )
    .await
}

fn clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
}

#[durable]
async fn cool_off(_ctx: &Ctx, hours: u64) -> Result<String, String> {
    step!("before", Ok::<_, String>(()))?;
    sleep!("cool-off", Duration::from_secs(hours * 3600));
    let answer: Option<String> = wait_for!("answer", timeout = Duration::from_secs(72 * 3600));
    Ok(answer.unwrap_or_else(|| "no answer".into()))
}

#[tokio::test]
async fn a_manual_clock_passes_a_long_sleep_and_a_wait_timeout_at_once() {
    let clock = clock();
    let engine = Engine::builder()
        .store(MemoryStore::new())
        .clock(clock.clone())
        .register(cool_off)
        .open()
        .await
        .unwrap();
    let handle = engine.start(cool_off, "c-1", 3).await.unwrap();
    wait_until("the sleep to park", async || {
        matches!(engine.status("c-1").await, Ok(Status::Sleeping { .. }))
    })
    .await;
    let Ok(Status::Sleeping { until }) = engine.status("c-1").await else {
        unreachable!()
    };
    assert_eq!(
        until.duration_since(clock.now()).unwrap(),
        Duration::from_secs(3 * 3600),
        "the deadline is on the engine's clock"
    );
    clock.advance(Duration::from_secs(3 * 3600));
    wait_until("the wait to park", async || {
        matches!(engine.status("c-1").await, Ok(Status::Waiting { .. }))
    })
    .await;
    clock.advance(Duration::from_secs(72 * 3600));
    let out = tokio::time::timeout(hang_guard(), handle.result())
        .await
        .expect("hang guard")
        .unwrap();
    assert_eq!(out, Ok("no answer".to_string()));
    let history = engine.history("c-1").await.unwrap();
    let timed_out = history.steps.iter().find(|s| s.name == "answer").unwrap();
    assert_eq!(timed_out.outcome, StepOutcome::TimedOut);
    assert_eq!(
        timed_out.finished_at.unwrap(),
        clock.now(),
        "the timeout is stamped with the manual clock's time"
    );
    engine.shutdown().await;
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn flaky(_ctx: &Ctx, _n: u32) -> Result<u32, String> {
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .initial_delay(Duration::from_secs(3600))
        .max_delay(Duration::from_secs(86_400))
        .jitter(0.0);
    step!(
        "call",
        retry = policy,
        async {
            let n = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 {
                Err(format!("attempt {n} failed"))
            } else {
                Ok(n)
            }
        }
        .await
    )
}

#[tokio::test]
async fn retry_delays_run_on_the_engine_clock() {
    let clock = clock();
    let engine = Engine::builder()
        .store(MemoryStore::new())
        .clock(clock.clone())
        .register(flaky)
        .open()
        .await
        .unwrap();
    let handle = engine.start(flaky, "f-1", 0).await.unwrap();
    for attempts in [1, 2] {
        wait_until("a failed attempt to be recorded", async || {
            engine.history("f-1").await.is_ok_and(|h| {
                h.steps.first().is_some_and(|s| {
                    s.attempts == attempts && matches!(s.outcome, StepOutcome::Retrying { .. })
                })
            })
        })
        .await;
        assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), attempts);
        // An hour of backoff passes only when the clock says so.
        let delay = Duration::from_secs(3600) * 2u32.pow(attempts - 1);
        clock.advance(delay);
    }
    let out = tokio::time::timeout(hang_guard(), handle.result())
        .await
        .expect("hang guard")
        .unwrap();
    assert_eq!(out, Ok(3));
    engine.shutdown().await;
}

static GATE: Notify = Notify::const_new();

#[durable]
async fn gated(_ctx: &Ctx, fail: bool) -> Result<u32, String> {
    step!("first", Ok::<_, String>(1))?;
    step!(
        "slow",
        async {
            GATE.notified().await;
            Ok::<_, String>(2)
        }
        .await
    )?;
    if fail {
        return Err("refused".into());
    }
    Ok(3)
}

#[tokio::test]
async fn status_shows_a_step_in_flight_and_whether_the_workflow_returned_err() {
    let engine = Engine::builder()
        .store(MemoryStore::new())
        .register(gated)
        .open()
        .await
        .unwrap();
    let handle = engine.start(gated, "g-1", true).await.unwrap();
    wait_until("the slow step to run", async || {
        matches!(engine.status("g-1").await, Ok(Status::Running { steps }) if !steps.is_empty())
    })
    .await;
    let Ok(Status::Running { steps }) = engine.status("g-1").await else {
        unreachable!()
    };
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (
            steps[0].name.as_str(),
            steps[0].occurrence,
            steps[0].attempt
        ),
        ("slow", 0, 1)
    );
    let history = engine.history("g-1").await.unwrap();
    let names: Vec<_> = history
        .steps
        .iter()
        .map(|s| (s.name.as_str(), &s.outcome))
        .collect();
    assert!(
        matches!(
            names[..],
            [
                ("first", StepOutcome::Value { .. }),
                ("slow", StepOutcome::Running { attempt: 1 })
            ]
        ),
        "{names:?}"
    );
    GATE.notify_one();
    assert_eq!(handle.result().await.unwrap(), Err("refused".to_string()));
    assert_eq!(
        engine.status("g-1").await.unwrap(),
        Status::Completed { is_err: Some(true) }
    );
    let handle = engine.start(gated, "g-2", false).await.unwrap();
    GATE.notify_one();
    assert_eq!(handle.result().await.unwrap(), Ok(3));
    assert_eq!(
        engine.status("g-2").await.unwrap(),
        Status::Completed {
            is_err: Some(false)
        }
    );
    engine.shutdown().await;
}

#[durable]
async fn quick(_ctx: &Ctx, fail: bool) -> Result<(), String> {
    step!("only", Ok::<_, String>(()))?;
    if fail { Err("no".into()) } else { Ok(()) }
}

#[durable]
async fn parked(_ctx: &Ctx, _n: u32) -> Result<(), String> {
    let _: u32 = wait_for!("go");
    Ok(())
}

#[tokio::test]
async fn listing_pages_newest_first_and_filters() {
    let clock = clock();
    let engine = Engine::builder()
        .store(MemoryStore::new())
        .clock(clock.clone())
        .register(quick)
        .register(parked)
        .open()
        .await
        .unwrap();
    // 30 finished instances one second apart (every third returns Err),
    // then 5 parked ones.
    for i in 0..30 {
        engine
            .run(quick, format!("q-{i:02}"), i % 3 == 0)
            .await
            .unwrap()
            .ok();
        clock.advance(Duration::from_secs(1));
    }
    for i in 0..5 {
        drop(engine.start(parked, format!("p-{i}"), i).await.unwrap());
        clock.advance(Duration::from_secs(1));
    }
    wait_until("the waits to park", async || {
        engine
            .list(&ListFilter::new().status(StatusKind::Waiting))
            .await
            .is_ok_and(|p| p.instances.len() == 5)
    })
    .await;

    // Every instance, seven to a page, newest first, each exactly once.
    let mut seen = Vec::new();
    let mut filter = ListFilter::new().limit(7);
    let mut pages = 0;
    loop {
        let page = engine.list(&filter).await.unwrap();
        pages += 1;
        assert!(page.instances.len() <= 7);
        seen.extend(page.instances.iter().map(|i| (i.id.clone(), i.created_at)));
        match page.next {
            // The cursor survives a trip through text (a CLI flag, a URL).
            Some(next) => filter = filter.after(next.to_string().parse().unwrap()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 35);
    assert_eq!(pages, 5);
    assert_eq!(seen[0].0, "p-4");
    assert_eq!(seen[34].0, "q-00");
    assert!(seen.windows(2).all(|w| w[0].1 >= w[1].1), "newest first");

    // By workflow and status.
    let failed = engine
        .list(
            &ListFilter::new()
                .workflow("quick")
                .status(StatusKind::Completed),
        )
        .await
        .unwrap();
    assert_eq!(failed.instances.len(), 30);
    let errs = failed
        .instances
        .iter()
        .filter(|i| i.status == Status::Completed { is_err: Some(true) })
        .count();
    assert_eq!(errs, 10);
    let waiting = engine
        .list(&ListFilter::new().workflow("parked"))
        .await
        .unwrap();
    assert_eq!(waiting.instances.len(), 5);
    assert!(
        waiting
            .instances
            .iter()
            .all(|i| matches!(&i.status, Status::Waiting { event, .. } if event == "go"))
    );

    // By creation time: [start + 10 s, start + 20 s) holds q-10 … q-19.
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let window = engine
        .list(
            &ListFilter::new()
                .created_after(start + Duration::from_secs(10))
                .created_before(start + Duration::from_secs(20)),
        )
        .await
        .unwrap();
    let ids: Vec<_> = window.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        (10..20)
            .rev()
            .map(|i| format!("q-{i:02}"))
            .collect::<Vec<_>>()
    );
    assert!("zz".parse::<durable::Cursor>().is_err());
    engine.shutdown().await;
}
