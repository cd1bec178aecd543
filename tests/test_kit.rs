//! Guards the test kit (`durable::testing`) as a user's tests use it: a
//! three-day sleep, a 72-hour wait timeout and an hour of retry backoff pass
//! with `advance`, deterministically; `run_until_idle` waits for step bodies
//! and woken instances, and returns once only time or an event can move
//! things on.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use durable::prelude::*;
use durable::testing::TestEngine;
use durable::{Status, StepOutcome};

mod support;

const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3_600);

#[durable]
async fn onboarding(_ctx: &Ctx, user: String) -> Result<String, String> {
    step!("create-account", Ok::<_, String>(format!("acct-{user}")))?;
    sleep!("cool-off", 3 * DAY);
    let answer: Option<bool> = wait_for!("survey", timeout = 72 * HOUR);
    let outcome = match answer {
        Some(true) => "happy",
        Some(false) => "unhappy",
        None => "silent",
    };
    step!("send-summary", Ok::<_, String>(()))?;
    Ok(format!("{user}: {outcome}"))
}

#[tokio::test]
async fn days_of_sleeps_and_timeouts_pass_in_a_test() {
    let kit = TestEngine::open(Engine::builder().register(onboarding))
        .await
        .unwrap();
    let handle = kit
        .start(onboarding, "u-1", "ada".to_string())
        .await
        .unwrap();
    kit.run_until_idle().await;
    assert!(matches!(
        kit.status("u-1").await.unwrap(),
        Status::Sleeping { .. }
    ));
    // Two days pass: still sleeping.
    kit.advance(2 * DAY).await;
    assert!(matches!(
        kit.status("u-1").await.unwrap(),
        Status::Sleeping { .. }
    ));
    // The third day ends the sleep; the instance runs on to its wait.
    kit.advance(DAY).await;
    assert!(matches!(
        kit.status("u-1").await.unwrap(),
        Status::Waiting { ref event, until: Some(_) } if event == "survey"
    ));
    // 72 hours without an answer: the wait times out and the workflow ends.
    kit.advance(72 * HOUR).await;
    assert!(matches!(
        kit.status("u-1").await.unwrap(),
        Status::Completed {
            is_err: Some(false)
        }
    ));
    let out = support::guarded("the result", handle.result())
        .await
        .unwrap();
    assert_eq!(out, Ok("ada: silent".to_string()));
    let history = kit.history("u-1").await.unwrap();
    let survey = history.steps.iter().find(|s| s.name == "survey").unwrap();
    assert_eq!(survey.outcome, StepOutcome::TimedOut);
    kit.shutdown().await;
}

#[tokio::test]
async fn an_event_moves_a_waiting_instance_without_time_passing() {
    let kit = TestEngine::open(Engine::builder().register(onboarding))
        .await
        .unwrap();
    let handle = kit
        .start(onboarding, "u-2", "bob".to_string())
        .await
        .unwrap();
    kit.advance(3 * DAY).await;
    let before = kit.clock().now();
    kit.send_event("u-2", "survey", true).await.unwrap();
    kit.run_until_idle().await;
    assert!(matches!(
        kit.status("u-2").await.unwrap(),
        Status::Completed { .. }
    ));
    assert_eq!(kit.clock().now(), before);
    let out = support::guarded("the result", handle.result())
        .await
        .unwrap();
    assert_eq!(out, Ok("bob: happy".to_string()));
    kit.shutdown().await;
}

/// Three attempts, one hour then two hours apart, without jitter.
fn hourly_retries() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(3)
        .initial_delay(HOUR)
        .max_delay(DAY)
        .jitter(0.0)
}

static CALLS: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn flaky(_ctx: &Ctx, _n: u32) -> Result<u32, String> {
    step!(
        "call",
        retry = hourly_retries(),
        async {
            let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
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
async fn retry_backoff_waits_for_the_clock() {
    let kit = TestEngine::open(Engine::builder().register(flaky))
        .await
        .unwrap();
    let handle = kit.start(flaky, "f-1", 0).await.unwrap();
    kit.run_until_idle().await;
    // The first attempt failed; the second waits an hour of backoff.
    assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    kit.advance(HOUR - Duration::from_secs(1)).await;
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        1,
        "no attempt before the backoff ends"
    );
    kit.advance(Duration::from_secs(1)).await;
    assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    // The third attempt comes after two hours (the backoff doubles).
    kit.advance(2 * HOUR).await;
    assert_eq!(CALLS.load(Ordering::SeqCst), 3);
    let out = support::guarded("the result", handle.result())
        .await
        .unwrap();
    assert_eq!(out, Ok(3));
    kit.shutdown().await;
}

static RELEASED: AtomicBool = AtomicBool::new(false);
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[durable]
async fn outside(_ctx: &Ctx, _n: u32) -> Result<(), String> {
    step!(
        "call-out",
        async {
            GATE.notified().await;
            Ok::<_, String>(())
        }
        .await
    )
}

#[tokio::test]
async fn run_until_idle_waits_for_a_step_body_that_waits_outside() {
    let kit = TestEngine::open(Engine::builder().register(outside))
        .await
        .unwrap();
    let _handle = kit.start(outside, "o-1", 0).await.unwrap();
    // Something outside the engine answers the body later; until then the
    // engine is not idle (a running body is work, not a wait).
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        RELEASED.store(true, Ordering::SeqCst);
        GATE.notify_one();
    });
    kit.run_until_idle().await;
    assert!(
        RELEASED.load(Ordering::SeqCst),
        "returned while a step body was running"
    );
    assert!(matches!(
        kit.status("o-1").await.unwrap(),
        Status::Completed { .. }
    ));
    kit.shutdown().await;
}

#[durable]
async fn checkout(_ctx: &Ctx, cents: u64) -> Result<String, String> {
    let charge = step!("charge-card", Ok::<_, String>(format!("ch_real_{cents}")))?;
    step!("send-receipt", Ok::<_, String>(()))?;
    Ok(charge)
}

#[tokio::test]
async fn a_mocked_step_returns_its_mock_and_its_body_never_runs() {
    let kit = TestEngine::open(Engine::builder().register(checkout))
        .await
        .unwrap();
    kit.mock(
        checkout,
        "charge-card",
        Ok::<String, String>("ch_test".into()),
    )
    .unwrap();
    let out = kit.run(checkout, "c-1", 500).await.unwrap();
    assert_eq!(out, Ok("ch_test".to_string()));
    assert_eq!(kit.body_runs("charge-card"), 0);
    assert_eq!(kit.body_runs("send-receipt"), 1);
    // The mocked outcome is checkpointed like a real one.
    let history = kit.history("c-1").await.unwrap();
    assert!(matches!(
        history.steps[0].outcome,
        StepOutcome::Value { .. }
    ));
    // A mocked error is the step's final error (not retried).
    kit.mock(
        checkout,
        "charge-card",
        Err::<String, String>("card declined".into()),
    )
    .unwrap();
    let out = kit.run(checkout, "c-2", 700).await.unwrap();
    assert_eq!(out, Err("card declined".to_string()));
    assert_eq!(
        kit.body_runs("send-receipt"),
        1,
        "the workflow stopped at the error"
    );
    kit.shutdown().await;
}

#[tokio::test]
async fn a_mock_for_a_missing_step_or_of_other_types_is_refused() {
    let kit = TestEngine::open(Engine::builder().register(checkout))
        .await
        .unwrap();
    let unknown = kit
        .mock(checkout, "charge", Ok::<String, String>("x".into()))
        .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "workflow \"checkout\" has no step \"charge\" (its steps: charge-card, send-receipt)"
    );
    let wrong = kit
        .mock(checkout, "charge-card", Ok::<u64, String>(5))
        .unwrap_err();
    assert!(
        matches!(&wrong, durable::testing::MockError::WrongTypes { step, .. } if step == "charge-card"),
        "{wrong}"
    );
    assert!(wrong.to_string().contains("u64"), "{wrong}");
    kit.shutdown().await;
}

#[tokio::test]
async fn body_runs_count_every_attempt() {
    let kit = TestEngine::open(Engine::builder().register(stubborn))
        .await
        .unwrap();
    let handle = kit.start(stubborn, "s-1", 0).await.unwrap();
    kit.advance(HOUR).await;
    kit.advance(2 * HOUR).await;
    let out = support::guarded("the result", handle.result())
        .await
        .unwrap();
    assert_eq!(out, Err("no".to_string()));
    assert_eq!(
        kit.body_runs("refuse"),
        3,
        "three attempts, each a real run"
    );
    kit.shutdown().await;
}

#[durable]
async fn stubborn(_ctx: &Ctx, _n: u32) -> Result<u32, String> {
    step!(
        "refuse",
        retry = hourly_retries(),
        async { Err::<u32, String>("no".into()) }.await
    )
}
