//! Crash-point sweep: guards the same invariants as the torture, at every
//! named point of the checkpoint path instead of at random moments.
//!
//! For each point in `durable::CRASH_POINTS` and several N, a worker process
//! (this binary re-run as `crash_points_child`) runs 3 workflows of 4 steps
//! with `DURABLE_CRASH_POINT=point:N`, so it aborts (no unwinding, no flush)
//! the N-th time it reaches the point; it is restarted once more with the
//! same crash point, then without until its round completes. The ledger and
//! the store are then checked as in the torture (`support::check_ledger`,
//! `support::check_store`), and every point must have fired at least once.
//! The `recovery.*` point is only reached when something is unfinished, so
//! its cases begin with a crash after the fifth checkpoint.
//!
//! Needs the feature: `cargo test --features crash-points --test crash_points`.
#![cfg(feature = "crash-points")]

mod support;

use std::collections::BTreeMap;
use std::sync::Mutex;

use support::{Ended, Worker, Workload};

/// The child process's entry point; returns at once in the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_child() {
    support::worker().await;
}

const WORKLOAD: Workload = Workload {
    instances: 3,
    steps: 4,
    // Over sled's blob threshold: blob files are written at these points too.
    pad: 140 << 10,
};

/// Which hit of a point aborts.
const HITS: [u64; 4] = [1, 2, 4, 9];

/// What one (point, N) case did.
struct CaseResult {
    point: &'static str,
    hits: u64,
    /// Generations that aborted at the crash point.
    fired: usize,
    gens: usize,
    reruns: usize,
}

/// Runs one case in a fresh directory; `Err` holds every violation.
fn case(point: &'static str, hits: u64) -> Result<CaseResult, String> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let mut plan: Vec<Option<String>> = Vec::new();
    if point.starts_with("recovery.") {
        plan.push(Some("step.after_write:5".into()));
    }
    plan.push(Some(format!("{point}:{hits}")));
    plan.push(Some(format!("{point}:{hits}")));
    let mut ended = BTreeMap::new();
    let mut fired = 0;
    let mut failure = None;
    for gen_no in 1u64..=20 {
        let crash = plan.get(gen_no as usize - 1).cloned().flatten();
        let env: Vec<(&str, String)> = crash
            .iter()
            .map(|c| ("DURABLE_CRASH_POINT", c.clone()))
            .collect();
        let mut worker = Worker::spawn("crash_points_child", &dir, gen_no, 0, WORKLOAD, &env);
        match worker.wait() {
            Ok(how) => {
                ended.insert(gen_no, how);
                if how == Ended::Killed && crash.as_deref().is_some_and(|c| c.starts_with(point)) {
                    fired += 1;
                }
                if how == Ended::Clean {
                    break;
                }
                if crash.is_none() {
                    failure = Some(format!("generation {gen_no} died without a crash point"));
                    break;
                }
            }
            Err(e) => {
                failure = Some(format!("generation {gen_no}: {e}"));
                break;
            }
        }
    }
    let jobs = WORKLOAD.jobs(0);
    let mut errors: Vec<String> = failure.into_iter().collect();
    if ended.values().last() != Some(&Ended::Clean) {
        errors.push("the round never completed".into());
    }
    let summary = support::check_ledger(&dir, &ended, &jobs).map_err(|e| errors.extend(e));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(support::check_store(&dir, &jobs)) {
        errors.extend(e);
    }
    if errors.is_empty() {
        Ok(CaseResult {
            point,
            hits,
            fired,
            gens: ended.len(),
            reruns: summary.map(|s| s.reruns).unwrap_or(0),
        })
    } else {
        let kept = support::keep(tmp);
        Err(format!(
            "crash point {point}:{hits} (store and ledger kept at {}): {}",
            kept.display(),
            support::violations(&errors)
        ))
    }
}

#[test]
fn every_crash_point_keeps_the_invariants() {
    if std::env::var_os(support::CHILD_ENV).is_some() {
        return;
    }
    assert!(!durable::CRASH_POINTS.is_empty());
    let cases: Vec<(&'static str, u64)> = durable::CRASH_POINTS
        .iter()
        .flat_map(|p| HITS.iter().map(move |&n| (*p, n)))
        .collect();
    let queue = Mutex::new(cases.into_iter());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some((point, hits)) = next else { break };
                    let result = case(point, hits);
                    results.lock().unwrap().push(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{}",
        failures
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut by_point: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for r in results.iter().flatten() {
        let entry = by_point.entry(r.point).or_default();
        entry.0 += r.fired;
        entry.1 += r.gens;
        entry.2 += r.reruns;
        let _ = r.hits;
    }
    for point in durable::CRASH_POINTS {
        let (fired, gens, reruns) = by_point.get(point).copied().unwrap_or_default();
        eprintln!(
            "crash point {point}: fired {fired} times in {gens} generations, {reruns} step re-runs"
        );
        assert!(
            fired > 0,
            "crash point {point} never fired: the sweep does not reach it"
        );
    }
}
