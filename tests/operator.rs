//! Operator actions and limits as a user sees them: a step's timeout per
//! attempt (driven by the test kit's manual clock), and late events.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable::prelude::*;
use durable::testing::TestEngine;
use durable::{InstanceError, Status, StepOutcome};

mod support;

use support::{guarded, wait_until};

/// Bodies started, and bodies whose future was dropped unfinished.
static STARTED: AtomicU32 = AtomicU32::new(0);
static DROPPED: AtomicU32 = AtomicU32::new(0);

/// The first two attempts hang (until their timeout drops them); the third
/// answers.
async fn flaky_fetch() -> Result<u32, String> {
    let attempt = STARTED.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt < 3 {
        struct Mark;
        impl Drop for Mark {
            fn drop(&mut self) {
                DROPPED.fetch_add(1, Ordering::SeqCst);
            }
        }
        let _mark = Mark;
        std::future::pending::<()>().await;
    }
    Ok(attempt)
}

#[durable]
async fn timed(_ctx: &Ctx, _: ()) -> Result<u32, String> {
    step!(
        "fetch",
        retry = RetryPolicy::default()
            .max_attempts(3)
            .initial_delay(Duration::from_secs(1))
            .jitter(0.0),
        timeout = Duration::from_secs(10),
        flaky_fetch().await
    )
}

#[tokio::test]
async fn a_timed_out_attempt_is_a_failed_attempt_and_its_body_is_dropped() {
    let kit = TestEngine::open(Engine::builder().register(timed))
        .await
        .unwrap();
    let handle = kit.start(timed, "t-1", ()).await.unwrap();
    for attempt in 1..=2u32 {
        wait_until("the attempt runs", async || {
            let started = STARTED.load(Ordering::SeqCst);
            if started == attempt {
                Ok(())
            } else {
                Err(started)
            }
        })
        .await;
        // Not timed out a second early.
        kit.clock().advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert_eq!(DROPPED.load(Ordering::SeqCst), attempt - 1);
        kit.clock().advance(Duration::from_secs(1));
        wait_until("the attempt is dropped", async || {
            let dropped = DROPPED.load(Ordering::SeqCst);
            if dropped == attempt {
                Ok(())
            } else {
                Err(dropped)
            }
        })
        .await;
        let history = wait_until("the failed attempt is recorded", async || {
            let history = kit.history("t-1").await.unwrap();
            match &history.steps[0].outcome {
                StepOutcome::Retrying { last_error } => Ok(last_error.clone()),
                other => Err(other.clone()),
            }
        })
        .await;
        assert_eq!(history, "timed out after 10000 ms");
        // The backoff (1 s, then 2 s) passes.
        kit.clock().advance(Duration::from_secs(2));
    }
    assert_eq!(guarded("the result", handle.result()).await.unwrap(), Ok(3));
    let history = kit.history("t-1").await.unwrap();
    assert_eq!(history.steps[0].attempts, 3);
    kit.shutdown().await;
}

#[durable]
async fn always_slow(_ctx: &Ctx, _: ()) -> Result<(), String> {
    step!(
        "hang",
        retry = RetryPolicy::no_retry(),
        timeout = Duration::from_secs(5),
        std::future::pending::<Result<(), String>>().await
    )
}

#[tokio::test]
async fn a_last_attempt_that_times_out_fails_the_instance_for_good() {
    let kit = TestEngine::open(Engine::builder().register(always_slow))
        .await
        .unwrap();
    let handle = kit.start(always_slow, "s-1", ()).await.unwrap();
    wait_until("the attempt runs", async || match kit.status("s-1").await {
        Ok(Status::Running { steps }) if !steps.is_empty() => Ok(()),
        other => Err(other),
    })
    .await;
    kit.clock().advance(Duration::from_secs(5));
    let error = guarded("the result", handle.result()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            durable::Error::Instance(InstanceError::StepTimedOut { step, timeout_ms: 5000, .. })
                if step == "hang"
        ),
        "{error:?}"
    );
    assert!(
        matches!(kit.status("s-1").await.unwrap(), Status::Failed { .. }),
        "{:?}",
        kit.status("s-1").await
    );
    let history = kit.history("s-1").await.unwrap();
    assert_eq!(
        history.steps[0].outcome,
        StepOutcome::Expired {
            timeout: Duration::from_secs(5)
        }
    );
    // Attaching again replays the recorded failure: the body never runs again.
    let again = kit.attach(always_slow, "s-1").await.unwrap();
    assert!(matches!(
        guarded("the replayed result", again.result()).await,
        Err(durable::Error::Instance(InstanceError::Failed { .. }))
    ));
    kit.shutdown().await;
}

const HOUR: Duration = Duration::from_secs(3_600);

#[durable]
async fn approval_window(_ctx: &Ctx, _: ()) -> Result<String, String> {
    let first: Option<bool> = wait_for!("approve", timeout = HOUR);
    sleep!("report-later", 24 * HOUR);
    let second: Option<bool> = wait_for!("approve-again", timeout = HOUR);
    Ok(format!("{first:?} {second:?}"))
}

#[tokio::test]
async fn a_late_event_for_a_timed_out_wait_is_refused_not_dropped() {
    let kit = TestEngine::open(Engine::builder().register(approval_window))
        .await
        .unwrap();
    let handle = kit.start(approval_window, "late-1", ()).await.unwrap();
    kit.run_until_idle().await;
    kit.advance(HOUR).await;
    assert!(matches!(
        kit.status("late-1").await.unwrap(),
        Status::Sleeping { .. }
    ));
    let late = kit.send_event("late-1", "approve", true).await.unwrap_err();
    assert!(
        matches!(
            &late,
            durable::Error::Usage(durable::UsageError::WaitTimedOut { event, occurrence: 0, .. })
                if event == "approve"
        ),
        "{late:?}"
    );
    // An event for a wait the instance has not reached yet is kept.
    kit.send_event("late-1", "approve-again", false)
        .await
        .unwrap();
    kit.advance(24 * HOUR).await;
    assert_eq!(
        guarded("the result", handle.result()).await.unwrap(),
        Ok("None Some(false)".to_string())
    );
    kit.shutdown().await;
}

#[durable]
async fn polling(_ctx: &Ctx, _: ()) -> Result<u32, String> {
    let mut got = 0;
    for _ in 0..2 {
        let tick: Option<u32> = wait_for!("tick", timeout = HOUR);
        got += tick.unwrap_or(100);
    }
    Ok(got)
}

#[tokio::test]
async fn an_event_after_a_timeout_is_taken_by_the_next_wait_of_the_name() {
    let kit = TestEngine::open(Engine::builder().register(polling))
        .await
        .unwrap();
    let handle = kit.start(polling, "poll-1", ()).await.unwrap();
    kit.run_until_idle().await;
    kit.advance(HOUR).await;
    // The first wait timed out, the second waits now: the event is its.
    kit.send_event("poll-1", "tick", 7u32).await.unwrap();
    assert_eq!(
        guarded("the result", handle.result()).await.unwrap(),
        Ok(107)
    );
    kit.shutdown().await;
}

// ------------------------------------------------------------------ retry

/// The amounts for which step "charge" of `fragile` panics (the bug an
/// operator fixes before retrying); one per test, as tests run in parallel.
static BROKEN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn broken(amount: u32, is: bool) {
    let mut broken = BROKEN.lock().unwrap();
    broken.retain(|a| *a != amount);
    if is {
        broken.push(amount);
    }
}
static PREPARED: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn fragile(_ctx: &Ctx, amount: u32) -> Result<u32, String> {
    let base = step!("prepare", {
        PREPARED.fetch_add(1, Ordering::SeqCst);
        Ok::<u32, String>(100)
    })?;
    step!("charge", retry = RetryPolicy::no_retry(), {
        if BROKEN.lock().unwrap().contains(&amount) {
            panic!("the card service is misconfigured");
        }
        Ok::<u32, String>(base + amount)
    })
}

/// Env var that makes this test binary a child performing one action on
/// the store in a directory, then aborting: `<action> <dir> <id>`.
const CHILD: &str = "DURABLE_OPERATOR_CHILD";

/// Runs test `name` of this binary as a child with `action`, and checks
/// that it killed itself (aborted) right after the action returned.
fn child_acts(name: &str, action: &str, dir: &std::path::Path, id: &str) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(CHILD, format!("{action} {} {id}", dir.display()))
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the child did not abort after the action: {status:?}"
    );
}

/// In a child: performs the action named in [`CHILD`] and aborts; `None`
/// outside a child.
async fn act_in_child() -> Option<()> {
    let spec = std::env::var(CHILD).ok()?;
    let mut words = spec.split(' ');
    let (action, dir, id) = (
        words.next().unwrap(),
        words.next().unwrap(),
        words.next().unwrap(),
    );
    let builder = Engine::builder().path(std::path::Path::new(dir).join("store"));
    match action {
        // No workflow registered: nothing runs here, the action is all.
        "retry" => builder.open().await.unwrap().retry(id).await.unwrap(),
        "resume" => {
            let engine = builder.register(parked).open().await.unwrap();
            let handle = engine.resume(parked, id).await.unwrap();
            std::mem::forget(handle);
        }
        other => panic!("unknown action {other}"),
    }
    std::process::abort();
}

/// The transitions' kinds, without `Resumed` (whether a resume by hand or a
/// claim of this process ran the instance first is a race).
fn transitions(history: &durable::History) -> Vec<String> {
    history
        .transitions
        .iter()
        .filter(|t| t.kind != durable::TransitionKind::Resumed)
        .map(|t| match &t.kind {
            durable::TransitionKind::Retried { set_aside, .. } => format!(
                "Retried({})",
                set_aside
                    .as_ref()
                    .map(|s| format!("{} #{} {}", s.name, s.attempts, s.outcome))
                    .unwrap_or_default()
            ),
            durable::TransitionKind::Reopened { from, .. } => format!("Reopened({from})"),
            other => format!("{other:?}")
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string(),
        })
        .collect()
}

#[tokio::test]
async fn retry_runs_the_failed_step_again_and_keeps_its_failure_in_history() {
    if act_in_child().await.is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Engine::builder()
            .path(dir.path().join("store"))
            .register(fragile)
            .open()
    };
    broken(5, true);
    let engine = open().await.unwrap();
    let failed = guarded("the run", engine.run(fragile, "order-1", 5)).await;
    assert!(
        matches!(
            failed,
            Err(durable::Error::Instance(InstanceError::StepPanicked { .. }))
        ),
        "{failed:?}"
    );
    // A completed instance is not retried.
    broken(5, false);
    guarded("a second order", engine.run(fragile, "order-2", 1))
        .await
        .unwrap()
        .unwrap();
    let refused = engine.retry("order-2").await.unwrap_err();
    assert!(
        matches!(
            refused,
            durable::Error::Usage(durable::UsageError::NotRetryable { .. })
        ),
        "{refused:?}"
    );
    let prepared = PREPARED.load(Ordering::SeqCst);
    engine.retry("order-1").await.unwrap();
    // Twice is once.
    engine.retry("order-1").await.unwrap();
    let handle = engine.attach(fragile, "order-1").await.unwrap();
    assert_eq!(
        guarded("the retried run", handle.result()).await.unwrap(),
        Ok(105)
    );
    // The step before the failed one replayed.
    assert_eq!(PREPARED.load(Ordering::SeqCst), prepared);
    let history = engine.history("order-1").await.unwrap();
    assert_eq!(
        transitions(&history),
        [
            "Started",
            "Failed",
            "Retried(charge #1 panicked: the card service is misconfigured)",
            "Completed"
        ]
    );
    assert_eq!(history.steps.len(), 2);
    assert_eq!(history.steps[1].attempts, 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_retry_survives_a_crash_right_after_it_returns() {
    if act_in_child().await.is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Engine::builder()
            .path(dir.path().join("store"))
            .register(fragile)
            .open()
    };
    broken(7, true);
    let engine = open().await.unwrap();
    let failed = guarded("the run", engine.run(fragile, "crash-1", 7)).await;
    assert!(failed.is_err(), "{failed:?}");
    engine.shutdown().await;
    child_acts(
        "a_retry_survives_a_crash_right_after_it_returns",
        "retry",
        dir.path(),
        "crash-1",
    );
    broken(7, false);
    let engine = open().await.unwrap();
    let handle = engine.attach(fragile, "crash-1").await.unwrap();
    assert_eq!(
        guarded("the retried run", handle.result()).await.unwrap(),
        Ok(107)
    );
    let history = engine.history("crash-1").await.unwrap();
    assert!(
        transitions(&history)
            .iter()
            .any(|t| t.starts_with("Retried(charge #1 panicked")),
        "{history:?}"
    );
    engine.shutdown().await;
}

// ----------------------------------------------------- resume a cancelled one

#[durable]
async fn parked(_ctx: &Ctx, _: ()) -> Result<String, String> {
    step!("before", Ok::<(), String>(()))?;
    sleep!("a-while", HOUR);
    Ok("woke".to_string())
}

#[tokio::test]
async fn a_cancelled_instance_resumes_from_its_checkpoints() {
    let kit = TestEngine::open(Engine::builder().register(parked))
        .await
        .unwrap();
    let _first = kit.start(parked, "c-1", ()).await.unwrap();
    kit.run_until_idle().await;
    kit.cancel("c-1").await.unwrap();
    assert_eq!(kit.status("c-1").await.unwrap(), Status::Cancelled);
    let handle = kit.resume(parked, "c-1").await.unwrap();
    // Resuming twice is resuming once.
    let again = kit.resume(parked, "c-1").await.unwrap();
    kit.run_until_idle().await;
    assert!(
        matches!(kit.status("c-1").await.unwrap(), Status::Sleeping { .. }),
        "{:?}",
        kit.history("c-1").await
    );
    kit.advance(HOUR).await;
    assert_eq!(
        guarded("the result", handle.result()).await.unwrap(),
        Ok("woke".to_string())
    );
    assert_eq!(
        guarded("the other result", again.result()).await.unwrap(),
        Ok("woke".to_string())
    );
    assert_eq!(kit.body_runs("before"), 1);
    let history = kit.history("c-1").await.unwrap();
    assert_eq!(
        transitions(&history),
        ["Started", "Cancelled", "Reopened(cancelled)", "Completed"]
    );
    kit.shutdown().await;
}

#[tokio::test]
async fn a_resume_of_a_cancelled_instance_survives_a_crash_right_after_it_returns() {
    if act_in_child().await.is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Engine::builder()
            .path(dir.path().join("store"))
            .register(parked)
            .open()
    };
    let engine = open().await.unwrap();
    let _handle = engine.start(parked, "c-2", ()).await.unwrap();
    engine.cancel("c-2").await.unwrap();
    engine.shutdown().await;
    child_acts(
        "a_resume_of_a_cancelled_instance_survives_a_crash_right_after_it_returns",
        "resume",
        dir.path(),
        "c-2",
    );
    let engine = open().await.unwrap();
    let status = engine.status("c-2").await.unwrap();
    assert!(
        matches!(status, Status::Running { .. } | Status::Sleeping { .. }),
        "{status:?}"
    );
    let history = engine.history("c-2").await.unwrap();
    assert!(
        transitions(&history).contains(&"Reopened(cancelled)".to_string()),
        "{history:?}"
    );
    engine.shutdown().await;
}

// ------------------------------------------------------------- retention

#[durable]
async fn short(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    step!("double", Ok::<u32, String>(n * 2))
}

#[durable]
async fn long_wait(_ctx: &Ctx, _: ()) -> Result<bool, String> {
    let got: Option<bool> = wait_for!("go", timeout = 30 * 24 * HOUR);
    Ok(got.is_some())
}

fn gone(result: durable::Result<Status>) -> bool {
    matches!(
        result,
        Err(durable::Error::Usage(durable::UsageError::NotFound { .. }))
    )
}

#[tokio::test]
async fn retention_purges_finished_instances_on_the_engine_clock() {
    let kit = TestEngine::open(
        Engine::builder()
            .register(short)
            .register(long_wait)
            .retention(24 * HOUR),
    )
    .await
    .unwrap();
    for n in 0..5 {
        assert_eq!(
            kit.run(short, format!("s-{n}"), n).await.unwrap(),
            Ok(n * 2)
        );
    }
    let _waiting = kit.start(long_wait, "w-1", ()).await.unwrap();
    kit.run_until_idle().await;
    kit.advance(12 * HOUR).await;
    // Finished for half the retention: kept.
    assert!(!gone(kit.status("s-0").await));
    kit.advance(13 * HOUR).await;
    wait_until("the finished instances are purged", async || {
        let left: Vec<_> = futures_all(&kit, 5).await;
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    assert!(gone(kit.history("s-3").await.map(|h| h.status)));
    // The unfinished instance is kept, and still takes its event.
    assert!(matches!(
        kit.status("w-1").await.unwrap(),
        Status::Waiting { .. }
    ));
    let page = kit.list(&durable::ListFilter::new()).await.unwrap();
    assert_eq!(
        page.instances
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["w-1"]
    );
    kit.send_event("w-1", "go", true).await.unwrap();
    kit.run_until_idle().await;
    // Nothing purged that was not finished long enough: a fresh start of an
    // old id runs again (the id is free).
    assert_eq!(kit.run(short, "s-0", 21).await.unwrap(), Ok(42));
    kit.shutdown().await;
}

/// The ids `s-0`..`s-{n}` that still exist.
async fn futures_all(kit: &TestEngine, n: u32) -> Vec<String> {
    let mut left = Vec::new();
    for i in 0..n {
        let id = format!("s-{i}");
        if !gone(kit.status(&id).await) {
            left.push(id);
        }
    }
    left
}

#[tokio::test]
async fn a_purge_survives_a_crash_right_after_it_returns() {
    if let Ok(spec) = std::env::var(CHILD) {
        let dir = spec.split(' ').nth(1).unwrap().to_string();
        let engine = Engine::builder()
            .path(std::path::Path::new(&dir).join("store"))
            .open()
            .await
            .unwrap();
        let purged = engine
            .purge(std::time::SystemTime::now() + HOUR)
            .await
            .unwrap();
        assert_eq!(purged, 3);
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Engine::builder()
            .path(dir.path().join("store"))
            .register(short)
            .register(long_wait)
            .open()
    };
    let engine = open().await.unwrap();
    for n in 0..3 {
        engine
            .run(short, format!("p-{n}"), n)
            .await
            .unwrap()
            .unwrap();
    }
    let _waiting = engine.start(long_wait, "keep", ()).await.unwrap();
    engine.shutdown().await;
    child_acts(
        "a_purge_survives_a_crash_right_after_it_returns",
        "purge",
        dir.path(),
        "-",
    );
    let engine = open().await.unwrap();
    for n in 0..3 {
        assert!(gone(engine.status(&format!("p-{n}")).await));
    }
    let kept = engine.status("keep").await;
    assert!(
        matches!(kept, Ok(Status::Waiting { .. } | Status::Running { .. })),
        "{kept:?}"
    );
    engine.shutdown().await;
}

// ------------------------------------------------------------------ pause

static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[durable]
async fn stepwise(_ctx: &Ctx, _: ()) -> Result<u32, String> {
    let a = step!("first", {
        GATE.acquire().await.unwrap().forget();
        Ok::<u32, String>(1)
    })?;
    let b = step!("second", Ok::<u32, String>(a + 1))?;
    sleep!("nap", HOUR);
    step!("third", Ok::<u32, String>(b + 1))
}

fn kinds(history: &durable::History) -> Vec<String> {
    transitions(history)
}

#[tokio::test]
async fn pause_lets_the_running_step_finish_and_starts_no_other() {
    let kit = TestEngine::open(Engine::builder().register(stepwise))
        .await
        .unwrap();
    let handle = kit.start(stepwise, "p-1", ()).await.unwrap();
    wait_until("the first step runs", async || {
        match kit.history("p-1").await {
            Ok(h)
                if matches!(
                    h.steps.first().map(|s| &s.outcome),
                    Some(StepOutcome::Running { .. })
                ) =>
            {
                Ok(())
            }
            other => Err(other.map(|h| h.steps)),
        }
    })
    .await;
    kit.pause("p-1").await.unwrap();
    // Twice is once.
    kit.pause("p-1").await.unwrap();
    assert!(matches!(
        kit.status("p-1").await.unwrap(),
        Status::Paused { .. }
    ));
    GATE.add_permits(1);
    kit.run_until_idle().await;
    let history = kit.history("p-1").await.unwrap();
    assert_eq!(
        history
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["first"],
        "{history:?}"
    );
    assert!(matches!(
        history.steps[0].outcome,
        StepOutcome::Value { .. }
    ));
    assert_eq!(kit.body_runs("second"), 0);
    kit.unpause("p-1").await.unwrap();
    kit.run_until_idle().await;
    assert_eq!(kit.body_runs("second"), 1);
    kit.advance(HOUR).await;
    assert_eq!(guarded("the result", handle.result()).await.unwrap(), Ok(3));
    let history = kit.history("p-1").await.unwrap();
    assert_eq!(
        kinds(&history),
        ["Started", "Paused", "Unpaused", "Completed"],
        "{history:?}"
    );
    kit.shutdown().await;
}

#[tokio::test]
async fn a_paused_parked_instance_is_not_woken_by_its_timer() {
    let kit = TestEngine::open(Engine::builder().register(stepwise))
        .await
        .unwrap();
    GATE.add_permits(1);
    let handle = kit.start(stepwise, "p-2", ()).await.unwrap();
    kit.run_until_idle().await;
    assert!(matches!(
        kit.status("p-2").await.unwrap(),
        Status::Sleeping { .. }
    ));
    kit.pause("p-2").await.unwrap();
    kit.advance(2 * HOUR).await;
    assert!(matches!(
        kit.status("p-2").await.unwrap(),
        Status::Paused { .. }
    ));
    assert_eq!(kit.body_runs("third"), 0);
    kit.unpause("p-2").await.unwrap();
    kit.run_until_idle().await;
    assert_eq!(guarded("the result", handle.result()).await.unwrap(), Ok(3));
    // A finished instance cannot be paused.
    let finished = kit.pause("p-2").await.unwrap_err();
    assert!(
        matches!(
            finished,
            durable::Error::Usage(durable::UsageError::InstanceFinished { .. })
        ),
        "{finished:?}"
    );
    kit.shutdown().await;
}

#[durable]
async fn napping(_ctx: &Ctx, _: ()) -> Result<u32, String> {
    step!("before-nap", Ok::<u32, String>(1))?;
    sleep!("nap", Duration::from_secs(2));
    step!("after-nap", Ok::<u32, String>(2))
}

#[tokio::test]
async fn a_pause_survives_a_crash_right_after_it_returns() {
    if let Ok(spec) = std::env::var(CHILD) {
        let mut words = spec.split(' ').skip(1);
        let (dir, id) = (words.next().unwrap(), words.next().unwrap());
        let engine = Engine::builder()
            .path(std::path::Path::new(dir).join("store"))
            .register(napping)
            .open()
            .await
            .unwrap();
        engine.pause(id).await.unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Engine::builder()
            .path(dir.path().join("store"))
            .register(napping)
            .open()
    };
    let engine = open().await.unwrap();
    let _handle = engine.start(napping, "nap-1", ()).await.unwrap();
    engine.shutdown().await;
    child_acts(
        "a_pause_survives_a_crash_right_after_it_returns",
        "pause",
        dir.path(),
        "nap-1",
    );
    let engine = open().await.unwrap();
    assert!(matches!(
        engine.status("nap-1").await.unwrap(),
        Status::Paused { .. }
    ));
    // Its two-second nap is long over by the time the hang guard would
    // trip; paused, it never runs on: the step after it has no checkpoint.
    let history = engine.history("nap-1").await.unwrap();
    assert!(
        history.steps.iter().all(|s| s.name != "after-nap"),
        "{history:?}"
    );
    assert!(kinds(&history).contains(&"Paused".to_string()));
    engine.unpause("nap-1").await.unwrap();
    let handle = engine.attach(napping, "nap-1").await.unwrap();
    assert_eq!(guarded("the result", handle.result()).await.unwrap(), Ok(2));
    engine.shutdown().await;
}

// --------------------------------------------------------------- deadline

#[durable]
async fn slow_flow(_ctx: &Ctx, _: ()) -> Result<u32, String> {
    step!("begin", Ok::<u32, String>(1))?;
    sleep!("long-nap", 3 * HOUR);
    step!("end", Ok::<u32, String>(2))
}

fn deadline_passed(history: &durable::History) -> bool {
    history
        .transitions
        .iter()
        .any(|t| matches!(t.kind, durable::TransitionKind::DeadlinePassed { .. }))
}

#[tokio::test]
async fn a_parked_instance_is_cancelled_at_its_deadline() {
    let kit = TestEngine::open(Engine::builder().register(slow_flow))
        .await
        .unwrap();
    let options = durable::StartOptions::new().deadline(HOUR);
    let handle = kit.start_with(slow_flow, "d-1", (), options).await.unwrap();
    // Without a deadline the same workflow runs on.
    let free = kit.start(slow_flow, "d-2", ()).await.unwrap();
    kit.run_until_idle().await;
    kit.advance(HOUR - Duration::from_secs(1)).await;
    assert!(matches!(
        kit.status("d-1").await.unwrap(),
        Status::Sleeping { .. }
    ));
    kit.advance(Duration::from_secs(1)).await;
    let ended = guarded("the result", handle.result()).await;
    assert!(
        matches!(
            ended,
            Err(durable::Error::Instance(
                InstanceError::DeadlinePassed { .. } | InstanceError::Cancelled { .. }
            ))
        ),
        "{ended:?}"
    );
    assert_eq!(kit.status("d-1").await.unwrap(), Status::Cancelled);
    let history = kit.history("d-1").await.unwrap();
    assert!(deadline_passed(&history), "{history:?}");
    assert_eq!(kit.body_runs("end"), 0);
    kit.advance(2 * HOUR).await;
    assert_eq!(guarded("the free run", free.result()).await.unwrap(), Ok(2));
    kit.shutdown().await;
}

#[tokio::test]
async fn a_deadline_survives_a_crash_right_after_the_start_returns() {
    if let Ok(spec) = std::env::var(CHILD) {
        let mut words = spec.split(' ').skip(1);
        let (dir, id) = (words.next().unwrap(), words.next().unwrap());
        let engine = Engine::builder()
            .path(std::path::Path::new(dir).join("store"))
            .register(slow_flow)
            .open()
            .await
            .unwrap();
        let options = durable::StartOptions::new().deadline(Duration::from_secs(2));
        std::mem::forget(engine.start_with(slow_flow, id, (), options).await.unwrap());
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    child_acts(
        "a_deadline_survives_a_crash_right_after_the_start_returns",
        "start",
        dir.path(),
        "d-3",
    );
    let engine = Engine::builder()
        .path(dir.path().join("store"))
        .register(slow_flow)
        .open()
        .await
        .unwrap();
    wait_until("the deadline cancels it", async || {
        match engine.status("d-3").await {
            Ok(Status::Cancelled) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let history = engine.history("d-3").await.unwrap();
    assert!(deadline_passed(&history), "{history:?}");
    engine.shutdown().await;
}

// ------------------------------------------------------------------- fork

static FORK_RUNS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[durable]
async fn pipeline(ctx: &Ctx, base: u32) -> Result<u32, String> {
    let id = ctx.id().to_string();
    let a = step!("load", {
        FORK_RUNS.lock().unwrap().push(format!("{id} load"));
        Ok::<u32, String>(base)
    })?;
    let b = step!("transform", {
        FORK_RUNS.lock().unwrap().push(format!("{id} transform"));
        Ok::<u32, String>(a * 10)
    })?;
    step!("save", {
        FORK_RUNS.lock().unwrap().push(format!("{id} save"));
        Ok::<u32, String>(b + 1)
    })
}

fn runs_of(id: &str) -> Vec<String> {
    FORK_RUNS
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.split(' ').next() == Some(id))
        .cloned()
        .collect()
}

#[tokio::test]
async fn fork_replays_the_steps_before_the_named_one_and_runs_the_rest() {
    let kit = TestEngine::open(Engine::builder().register(pipeline))
        .await
        .unwrap();
    assert_eq!(kit.run(pipeline, "f-1", 4).await.unwrap(), Ok(41));
    kit.fork("f-1", "transform", "f-1-again").await.unwrap();
    // Twice is once.
    kit.fork("f-1", "transform", "f-1-again").await.unwrap();
    let handle = kit.attach(pipeline, "f-1-again").await.unwrap();
    assert_eq!(guarded("the fork", handle.result()).await.unwrap(), Ok(41));
    assert_eq!(
        runs_of("f-1-again"),
        ["f-1-again transform", "f-1-again save"]
    );
    let history = kit.history("f-1-again").await.unwrap();
    assert!(
        history.transitions.iter().any(|t| matches!(
            &t.kind,
            durable::TransitionKind::Forked { from, step, .. } if from == "f-1" && step == "transform"
        )),
        "{history:?}"
    );
    assert_eq!(history.steps.len(), 3);
    // The source is unchanged; a step it never recorded is refused.
    assert_eq!(kit.history("f-1").await.unwrap().steps.len(), 3);
    let missing = kit.fork("f-1", "publish", "f-1-x").await.unwrap_err();
    assert!(
        matches!(
            missing,
            durable::Error::Usage(durable::UsageError::NoSuchStep { .. })
        ),
        "{missing:?}"
    );
    let taken = kit.fork("f-1", "save", "f-1").await.unwrap_err();
    assert!(
        matches!(
            taken,
            durable::Error::Usage(durable::UsageError::IdConflict { .. })
        ),
        "{taken:?}"
    );
    kit.shutdown().await;
}

#[tokio::test]
async fn a_fork_survives_a_crash_right_after_it_returns() {
    if let Ok(spec) = std::env::var(CHILD) {
        let mut words = spec.split(' ').skip(1);
        let (dir, id) = (words.next().unwrap(), words.next().unwrap());
        // No workflow registered: the fork is recorded, nothing runs here.
        let engine = Engine::builder()
            .path(std::path::Path::new(dir).join("store"))
            .open()
            .await
            .unwrap();
        engine.fork(id, "save", "forked").await.unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Engine::builder()
            .path(dir.path().join("store"))
            .register(pipeline)
            .open()
    };
    let engine = open().await.unwrap();
    assert_eq!(engine.run(pipeline, "src", 2).await.unwrap(), Ok(21));
    engine.shutdown().await;
    child_acts(
        "a_fork_survives_a_crash_right_after_it_returns",
        "fork",
        dir.path(),
        "src",
    );
    let engine = open().await.unwrap();
    let handle = engine.attach(pipeline, "forked").await.unwrap();
    assert_eq!(guarded("the fork", handle.result()).await.unwrap(), Ok(21));
    assert_eq!(runs_of("forked"), ["forked save"]);
    engine.shutdown().await;
}

#[durable(timeout = "1h")]
async fn bounded(_ctx: &Ctx, _: ()) -> Result<u32, String> {
    sleep!("too-long", 2 * HOUR);
    Ok(1)
}

#[tokio::test]
async fn a_workflow_timeout_in_the_attribute_cancels_its_instances() {
    let kit = TestEngine::open(Engine::builder().register(bounded))
        .await
        .unwrap();
    let handle = kit.start(bounded, "b-1", ()).await.unwrap();
    // A start option overrides the attribute.
    let longer = kit
        .start_with(
            bounded,
            "b-2",
            (),
            durable::StartOptions::new().deadline(3 * HOUR),
        )
        .await
        .unwrap();
    kit.run_until_idle().await;
    kit.advance(HOUR).await;
    assert!(guarded("the result", handle.result()).await.is_err());
    assert_eq!(kit.status("b-1").await.unwrap(), Status::Cancelled);
    assert!(deadline_passed(&kit.history("b-1").await.unwrap()));
    kit.advance(HOUR).await;
    assert_eq!(
        guarded("the longer one", longer.result()).await.unwrap(),
        Ok(1)
    );
    kit.shutdown().await;
}
