//! Crash torture: guards "a step that returned is never lost and never
//! re-run; no instance is ever lost" against real `kill -9`s at random
//! moments, half of them while the store opens and recovers.
//!
//! A driver starts a worker process (this test binary, re-run as the
//! `torture_child` test) that runs a round of K workflows of M steps, and
//! SIGKILLs it at a random moment; it restarts it until the round completes,
//! then starts the next round in the same store, until it has killed enough
//! times. Every step body appends BEGIN and END to an fsynced ledger outside
//! the store, and each step's output depends on a nonce drawn per attempt.
//! Afterwards the checker (`support::check_ledger`, `support::check_store`)
//! verifies: the store opened every time; no instance was lost; outputs are
//! the end of their chains; one chain of step outputs per instance; a step
//! that returned never ran again; a step re-ran only if it was in flight at a
//! kill, and re-runs ≤ the steps in flight at the kills; history holds each
//! step once; a completed instance never went back to running; and disk use
//! and the worker's peak RSS stay within budget.
//!
//! Smoke profile (CI): `cargo test --test torture`, up to 500 kills: killing
//! stops after 100 s, but not before 50 kills, so a slow machine delivers
//! fewer kills and takes longer, and never fails for it (no check depends on
//! the number of kills). Long profile: `DURABLE_TORTURE=long cargo test --release --test
//! torture -- --nocapture` (5000 kills), or `--ignored torture_long`.
//! `DURABLE_TORTURE_KILLS=N` overrides the kill count, and
//! `DURABLE_TORTURE_SEED=S` replays a seed's choices. A failure prints its
//! seed and keeps the store and ledger.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{Ended, Job, Rng, Worker, Workload};

/// The child process's entry point; returns at once in the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_child() {
    support::worker().await;
}

#[derive(Debug, Clone)]
struct Profile {
    name: &'static str,
    /// Kills to deliver.
    kills: u64,
    /// Stop killing after this long (then finish the round)...
    budget: Duration,
    /// ...but not before this many kills, however long they take.
    min_kills: u64,
    workload: Workload,
    /// Most bytes the store directory may occupy at the end.
    disk_budget: u64,
    /// Most peak RSS of a worker, in KiB.
    rss_budget_kib: u64,
}

impl Profile {
    fn smoke() -> Profile {
        Profile {
            name: "smoke",
            kills: 500,
            budget: Duration::from_secs(100),
            min_kills: 50,
            workload: Workload {
                instances: 6,
                steps: 12,
                pad: 160 << 10,
            },
            disk_budget: 96 << 20,
            rss_budget_kib: 256 << 10,
        }
    }

    fn long() -> Profile {
        Profile {
            name: "long",
            kills: 5000,
            budget: Duration::from_secs(3600),
            min_kills: 500,
            workload: Workload {
                instances: 16,
                steps: 30,
                pad: 160 << 10,
            },
            disk_budget: 1 << 30,
            rss_budget_kib: 512 << 10,
        }
    }

    fn from_env() -> Profile {
        let mut profile = match std::env::var("DURABLE_TORTURE").as_deref() {
            Ok("long") => Profile::long(),
            _ => Profile::smoke(),
        };
        if let Ok(kills) = std::env::var("DURABLE_TORTURE_KILLS") {
            profile.kills = kills.parse().expect("DURABLE_TORTURE_KILLS is a number");
            profile.budget = profile.budget.max(Duration::from_secs(profile.kills / 2));
            profile.min_kills = profile.min_kills.min(profile.kills);
        }
        profile
    }
}

/// Where in a generation the driver aims its kill.
#[derive(Debug, Clone, Copy)]
enum Aim {
    /// While the store opens and the engine recovers: a random delay after
    /// `OPENING`, up to the time the first step body usually begins.
    Open(Duration),
    /// While steps run: a random delay after the first step body began.
    Run(Duration),
    /// No kill: let the round finish.
    None,
}

/// Exponential moving average of a duration.
fn ema(old: Duration, sample: Duration) -> Duration {
    old.mul_f64(0.8) + sample.mul_f64(0.2)
}

fn torture(profile: Profile) {
    let seed = support::seed_from_env("DURABLE_TORTURE_SEED");
    eprintln!(
        "torture {}: seed {seed} (replay with DURABLE_TORTURE_SEED={seed}); {} kills, {:?}",
        profile.name, profile.kills, profile.workload
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let mut rng = Rng::new(seed);
    let mut ended: BTreeMap<u64, Ended> = BTreeMap::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut round = 0u32;
    let mut kills = 0u64;
    // Learnt as generations go: OPENING to the first step body, and from
    // there to the end of a round.
    let mut open_time = Duration::from_millis(50);
    let mut run_time = Duration::from_millis(60);
    let started = Instant::now();
    let mut failure: Option<String> = None;
    // Snapshot files a kill left half-written: (empty, not empty).
    let mut leftovers = (0usize, 0usize);
    jobs.extend(profile.workload.jobs(round));
    for gen_no in 1u64.. {
        let killing = kills < profile.kills
            && (kills < profile.min_kills || started.elapsed() < profile.budget);
        let aim = if !killing {
            Aim::None
        } else if rng.chance(0.5) {
            Aim::Open(rng.duration(open_time))
        } else {
            Aim::Run(rng.duration(run_time))
        };
        let mut worker = Worker::spawn("torture_child", &dir, gen_no, round, profile.workload, &[]);
        let outcome = match aim {
            Aim::None => worker.wait(),
            Aim::Open(delay) => match worker.wait_marker("OPENING") {
                Ok(Some(at)) => worker.kill_at(at + delay),
                Ok(None) => worker.wait(),
                Err(hang) => Err(hang),
            },
            Aim::Run(delay) => match worker.wait_marker("RUNNING") {
                Ok(Some(at)) => worker.kill_at(at + delay),
                Ok(None) => worker.wait(),
                Err(hang) => Err(hang),
            },
        };
        // Learn how long opening and running take, to aim the next kills.
        let markers = worker.markers();
        if let (Some(opening), Some(running)) = (markers.get("OPENING"), markers.get("RUNNING")) {
            open_time = ema(open_time, running.saturating_duration_since(*opening));
            if outcome == Ok(Ended::Clean) {
                run_time = ema(run_time, Instant::now().saturating_duration_since(*running));
            }
        }
        if std::env::var_os("DURABLE_TORTURE_TRACE").is_some() {
            eprintln!(
                "gen {gen_no} round {round}: {aim:?} -> {outcome:?}; open {open_time:?} run {run_time:?}; took {:?}",
                worker.spawned.elapsed()
            );
        }
        match outcome {
            Ok(how) => {
                ended.insert(gen_no, how);
                if how == Ended::Killed {
                    kills += 1;
                    count_leftovers(&support::store_path(&dir), &mut leftovers);
                } else {
                    if !killing {
                        break;
                    }
                    round += 1;
                    jobs.extend(profile.workload.jobs(round));
                }
            }
            Err(e) => {
                failure = Some(format!("generation {gen_no}: {e}"));
                break;
            }
        }
        if gen_no > profile.kills * 20 + 1000 {
            failure = Some(format!("no end after {gen_no} generations"));
            break;
        }
    }
    let elapsed = started.elapsed();

    let mut errors = Vec::new();
    if let Some(f) = failure {
        errors.push(f);
    }
    let summary = match support::check_ledger(&dir, &ended, &jobs) {
        Ok(summary) => Some(summary),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(support::check_store(&dir, &jobs)) {
        errors.extend(e);
    }
    let disk = support::disk_usage(&support::store_path(&dir));
    if disk > profile.disk_budget {
        errors.push(format!(
            "the store uses {disk} bytes, over the budget of {}",
            profile.disk_budget
        ));
    }
    if let Some(s) = &summary {
        if s.max_rss_kib > profile.rss_budget_kib {
            errors.push(format!(
                "a worker peaked at {} KiB RSS, over the budget of {} KiB",
                s.max_rss_kib, profile.rss_budget_kib
            ));
        }
        eprintln!(
            "torture {}: {} rounds in {elapsed:.1?}; {s}; store {:.1} MiB; \
             kills left {} empty and {} half-written snapshot files, every next open succeeded",
            profile.name,
            round + 1,
            disk as f64 / (1 << 20) as f64,
            leftovers.0,
            leftovers.1
        );
    }
    if !errors.is_empty() {
        let kept = support::keep(tmp);
        panic!(
            "torture {} failed with seed {seed} (replay: DURABLE_TORTURE_SEED={seed}); store and ledger kept at {}\n{}",
            profile.name,
            kept.display(),
            support::violations(&errors)
        );
    }
}

/// Counts the `snap.*.generating` files in `store`: what a kill during
/// sled's open leaves behind (the next open removes them).
fn count_leftovers(store: &std::path::Path, counts: &mut (usize, usize)) {
    for entry in std::fs::read_dir(store).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match entry.metadata().map(|m| m.len()) {
                Ok(0) => counts.0 += 1,
                _ => counts.1 += 1,
            }
        }
    }
}

#[test]
fn torture_smoke() {
    if std::env::var_os(support::CHILD_ENV).is_some() {
        return;
    }
    torture(Profile::from_env());
}

/// The long profile: `cargo test --release --test torture -- --ignored torture_long`.
#[test]
#[ignore = "long profile: minutes to hours"]
fn torture_long() {
    if std::env::var_os(support::CHILD_ENV).is_some() {
        return;
    }
    let mut profile = Profile::long();
    if let Ok(kills) = std::env::var("DURABLE_TORTURE_KILLS") {
        profile.kills = kills.parse().expect("DURABLE_TORTURE_KILLS is a number");
        profile.min_kills = profile.min_kills.min(profile.kills);
    }
    torture(profile);
}

/// The checker must catch what it is for: these ledgers break one
/// invariant each.
mod checker {
    use super::*;

    const JOB: Job = Job {
        round: 0,
        index: 0,
        steps: 2,
        pad: 0,
    };

    fn check(lines: &[String], ended: &[(u64, Ended)]) -> Result<support::Summary, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let text: String = lines.iter().map(|l| format!("{l} $\n")).collect();
        std::fs::write(support::ledger_path(dir.path()), text).unwrap();
        support::check_ledger(dir.path(), &ended.iter().copied().collect(), &[JOB])
    }

    /// A run of JOB: gen 1 is killed in step 1, gen 2 finishes. With
    /// `lose`, gen 2 runs step 0 again (its checkpoint was lost).
    fn ledger(lose: bool) -> Vec<String> {
        let (id, s) = (JOB.id(), JOB.seed());
        let mut l = vec![
            "GEN 1 OPENING".to_string(),
            "GEN 1 OPENED 0 0".into(),
            format!("STATUS {id} NotFound"),
            format!("STARTED {id}"),
            format!("BEGIN {id} 0 {s} 1"),
            format!("END {id} 0 11"),
            format!("RET {id} 0 11"),
            format!("BEGIN {id} 1 11 2"),
            "GEN 2 OPENING".into(),
            "GEN 2 OPENED 1 0".into(),
            format!("STATUS {id} Running"),
        ];
        let first = if lose {
            l.push(format!("BEGIN {id} 0 {s} 3"));
            l.push(format!("END {id} 0 12"));
            12
        } else {
            11
        };
        l.push(format!("RET {id} 0 {first}"));
        l.push(format!("STARTED {id}"));
        l.push(format!("BEGIN {id} 1 {first} 4"));
        l.push(format!("END {id} 1 13"));
        l.push(format!("RET {id} 1 13"));
        l.push(format!("COMPLETE {id} 13"));
        l.push("GEN 2 DONE 1000".into());
        l
    }

    #[test]
    fn a_valid_ledger_passes() {
        let summary = check(&ledger(false), &[(1, Ended::Killed), (2, Ended::Clean)]).unwrap();
        assert_eq!(
            (summary.kills, summary.reruns, summary.in_flight_at_kills),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_lost_checkpoint_is_caught() {
        let errors = check(&ledger(true), &[(1, Ended::Killed), (2, Ended::Clean)]).unwrap_err();
        let all = errors.join("\n");
        assert!(all.contains("began again"), "{all}");
        assert!(all.contains("different inputs"), "{all}");
        assert!(all.contains("returned different values"), "{all}");
    }

    #[test]
    fn a_rerun_without_a_kill_is_caught() {
        let errors = check(&ledger(false), &[(1, Ended::Clean), (2, Ended::Clean)]).unwrap_err();
        assert!(errors.join("\n").contains("was not killed"), "{errors:?}");
    }

    #[test]
    fn a_line_torn_by_a_kill_is_ignored_and_elsewhere_caught() {
        let id = JOB.id();
        let lines = ledger(false);
        let at = lines.iter().position(|l| l == "GEN 2 OPENING").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut text: String = lines[..at].iter().map(|l| format!("{l} $\n")).collect();
        text.push_str(&format!("RET {id} 1 1\n"));
        text.extend(lines[at..].iter().map(|l| format!("{l} $\n")));
        std::fs::write(support::ledger_path(dir.path()), &text).unwrap();
        let ended = [(1, Ended::Killed), (2, Ended::Clean)]
            .into_iter()
            .collect();
        support::check_ledger(dir.path(), &ended, &[JOB]).unwrap();
        // A torn line in a generation that went on is an error.
        let mut text: String = lines[..4].iter().map(|l| format!("{l} $\n")).collect();
        text.push_str(&format!("{}\n", lines[4]));
        text.extend(lines[5..].iter().map(|l| format!("{l} $\n")));
        std::fs::write(support::ledger_path(dir.path()), &text).unwrap();
        let errors = support::check_ledger(dir.path(), &ended, &[JOB]).unwrap_err();
        assert!(errors.join("\n").contains("torn"), "{errors:?}");
    }

    #[test]
    fn a_lost_instance_is_caught() {
        let lines: Vec<String> = ledger(false)
            .into_iter()
            .map(|l| {
                if l.ends_with(" Running") {
                    l.replace("Running", "NotFound")
                } else {
                    l
                }
            })
            .collect();
        let errors = check(&lines, &[(1, Ended::Killed), (2, Ended::Clean)]).unwrap_err();
        assert!(errors.join("\n").contains("instance lost"), "{errors:?}");
    }
}
