//! Guards the test kit's crash-at-every-step (`TestEngine::crash_at_every_step`)
//! as a user's tests use it: a workflow with loops, keyed steps, a sleep and
//! a wait survives a crash at every site; a step whose effect leaks outside
//! its checkpoint is caught at exactly the site and moment where it shows;
//! a wait nobody answers is reported as stuck.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable::prelude::*;
use durable::testing::{CrashMoment, Event, KitError, TestEngine};

const DAY: Duration = Duration::from_secs(86_400);

#[durable]
async fn fulfil(_ctx: &Ctx, items: Vec<String>) -> Result<String, String> {
    let order = step!(
        "create-order",
        Ok::<_, String>(format!("o-{}", items.len()))
    )?;
    let mut reserved = Vec::new();
    for item in &items {
        let r = step!(
            "reserve",
            key = item.clone(),
            Ok::<_, String>(format!("r-{item}"))
        )?;
        reserved.push(r);
    }
    for i in 0..2u32 {
        step!("notify", Ok::<_, String>(i))?;
    }
    sleep!("settle", DAY);
    let approved: Option<bool> = wait_for!("approval", timeout = 3 * DAY);
    let total = step!("charge", Ok::<_, String>(items.len() as u64 * 100))?;
    Ok(format!(
        "{order} {} {total} {approved:?}",
        reserved.join(",")
    ))
}

#[tokio::test]
async fn a_workflow_with_loops_keys_sleeps_and_waits_survives_a_crash_at_every_step() {
    let report =
        TestEngine::crash_at_every_step(fulfil, vec!["apple".to_string(), "pear".to_string()])
            .on_wait(|event| (event == "approval").then(|| Event::new(true)))
            .run()
            .await
            .unwrap();
    assert_eq!(
        report.sites,
        [
            "create-order#0",
            "reserve[\"apple\"]",
            "reserve[\"pear\"]",
            "notify#0",
            "notify#1",
            "charge#0"
        ]
    );
    assert_eq!(report.runs, 1 + 6 * 2);
    assert_eq!(
        report.output, "Ok(\"o-2 r-apple,r-pear 200 Some(true)\")",
        "the clean run got the event"
    );
    report.assert_ok();
}

#[tokio::test]
async fn an_unanswered_wait_times_out_in_every_run() {
    let report = TestEngine::crash_at_every_step(fulfil, vec!["fig".to_string()])
        .run()
        .await
        .unwrap();
    assert_eq!(report.output, "Ok(\"o-1 r-fig 100 None\")");
    assert_eq!(report.sites.len(), 5);
    report.assert_ok();
}

static CHARGES: AtomicU32 = AtomicU32::new(0);

/// Charges a card (an effect outside the engine), then reports how many
/// charges the card saw: read outside any step, so a second charge shows in
/// the output.
#[durable]
async fn double_charge(_ctx: &Ctx, cents: u32) -> Result<(u32, u32), String> {
    step!("prepare", Ok::<_, String>(()))?;
    step!(
        "charge",
        Ok::<_, String>(CHARGES.fetch_add(1, Ordering::SeqCst) + 1)
    )?;
    step!("receipt", Ok::<_, String>(()))?;
    Ok((cents, CHARGES.load(Ordering::SeqCst)))
}

#[tokio::test]
async fn a_step_whose_effect_leaks_is_caught_where_the_body_ran_but_was_not_checkpointed() {
    let report = TestEngine::crash_at_every_step(double_charge, 500)
        .before_each_run(|| CHARGES.store(0, Ordering::SeqCst))
        .run()
        .await
        .unwrap();
    assert_eq!(report.sites, ["prepare#0", "charge#0", "receipt#0"]);
    assert_eq!(report.runs, 7);
    assert!(!report.is_ok());
    assert_eq!(report.failures.len(), 1, "{report}");
    let failure = &report.failures[0];
    assert_eq!(failure.site, "charge#0");
    assert_eq!(failure.index, 1);
    assert_eq!(failure.moment, CrashMoment::BeforeCheckpoint);
    assert_eq!(
        failure.problem,
        "the output differs: Ok((500, 2)) after the crash, Ok((500, 1)) in the clean run"
    );
    let text = report.to_string();
    assert!(
        text.contains("crash at site 1 (charge#0), after the body, before the checkpoint"),
        "{text}"
    );
    let panic = std::panic::catch_unwind(|| report.assert_ok()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("1 failed"), "{message}");
}

#[tokio::test]
async fn only_after_the_checkpoint_the_leaking_step_passes() {
    let report = TestEngine::crash_at_every_step(double_charge, 1)
        .before_each_run(|| CHARGES.store(0, Ordering::SeqCst))
        .only(CrashMoment::AfterCheckpoint)
        .run()
        .await
        .unwrap();
    assert_eq!(report.runs, 4);
    report.assert_ok();
}

#[durable]
async fn waits_forever(_ctx: &Ctx, _n: u32) -> Result<u32, String> {
    step!("first", Ok::<_, String>(1))?;
    let n: u32 = wait_for!("go");
    Ok(n)
}

#[tokio::test]
async fn a_wait_without_timeout_and_without_an_answer_is_reported_stuck() {
    let error = TestEngine::crash_at_every_step(waits_forever, 0)
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, KitError::Stuck { run, .. } if run == "the clean run"),
        "{error}"
    );
    assert!(error.to_string().contains("Waiting"), "{error}");
    // Answered, it passes.
    TestEngine::crash_at_every_step(waits_forever, 0)
        .on_wait(|_| Some(Event::new(7u32)))
        .run()
        .await
        .unwrap()
        .assert_ok();
}

static FLAKES: AtomicU32 = AtomicU32::new(0);

#[durable]
async fn flaky_then_fine(_ctx: &Ctx, _n: u32) -> Result<u32, String> {
    step!(
        "call",
        retry = RetryPolicy::default()
            .max_attempts(3)
            .initial_delay(Duration::from_secs(3_600))
            .jitter(0.0),
        async {
            let n = FLAKES.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= 3 {
                Ok(n)
            } else {
                Err(format!("attempt {n}"))
            }
        }
        .await
    )
    .map(|_| 1)
}

#[tokio::test]
async fn retries_with_hours_of_backoff_pass_on_the_manual_clock() {
    let report = TestEngine::crash_at_every_step(flaky_then_fine, 0)
        .before_each_run(|| FLAKES.store(0, Ordering::SeqCst))
        .run()
        .await
        .unwrap();
    assert_eq!(report.sites, ["call#0"]);
    report.assert_ok();
}
