//! Multi-process torture on PostgreSQL: 3 worker processes (this test
//! binary, re-run as the `pg_torture_child` test) and a client (the test
//! itself, which registers no workflow) share one schema and run a few
//! hundred instances of a workload whose steps append to a ledger outside
//! the database, sleep, wait for an event the client sends, and fail
//! transiently (retried). Meanwhile the driver SIGKILLs workers (and
//! restarts them), SIGSTOPs one until the other workers have declared it
//! dead and then SIGCONTs it (a zombie), and, with `DURABLE_PG_RESTART=1`
//! or in CI, restarts PostgreSQL with `-m immediate` once.
//!
//! The checker then verifies from the ledger and the database: every
//! instance completed, with the output the chain of its step outputs
//! gives; an acknowledged checkpoint (a step that returned) was never lost
//! (every replay returns the same value, every next step got the same
//! input); a completed step never began again; within one run (from a
//! claim or a wake-up to the end of that replay) a step body ran once, plus
//! once per failure, so a body re-runs at most once per takeover; and a
//! zombie, once awake, began no step and wrote no checkpoint of an
//! instance taken over from it (no step of it returned there) and noticed
//! that its lease was gone;
//! its refused writes (`lease lost` in its log) are counted.
//!
//! `cargo test --features postgres --test pg_torture -- --nocapture`: the CI
//! profile (600 instances of 10 steps, chaos for a minute and a half; the
//! client sends the events spread over that time, so that work goes on
//! while workers die). `DURABLE_PG_TORTURE=long`: 5000 instances, chaos
//! for 15 minutes.
//! `DURABLE_PG_TORTURE_SEED=S` replays the driver's choices. Needs
//! PostgreSQL (`DURABLE_TEST_PG`); without it the test passes after saying
//! "skipped: no PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use durable::Status;
use durable::prelude::*;
use serde::{Deserialize, Serialize};
use support::{Rng, mix};

/// Set in a worker child: the test directory (ledger and logs).
const DIR_ENV: &str = "DURABLE_PG_TORTURE_DIR";
const SCHEMA_ENV: &str = "DURABLE_PG_TORTURE_SCHEMA";
/// `slot gen instances steps`.
const WORK_ENV: &str = "DURABLE_PG_TORTURE_WORK";

const WORKERS: u32 = 3;
const LEASE: Duration = Duration::from_secs(2);

fn url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A client connection, or `None` (after saying so) when there is no
/// server and `CI` is not set.
async fn connect() -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Some(client)
        }
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("no PostgreSQL at {}: {e}", url());
            }
            eprintln!("skipped: no PostgreSQL ({e})");
            None
        }
    }
}

// ------------------------------------------------------------------ workload

/// One instance: id `t{index}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PJob {
    /// Which instance: its id is `t{index}`.
    pub index: u32,
    /// How many steps it runs.
    pub steps: u32,
}

impl PJob {
    fn id(&self) -> String {
        format!("t{}", self.index)
    }
    fn seed(&self) -> u64 {
        mix(u64::from(self.index) + 1)
    }
    /// The step before which the instance waits for event `go`.
    fn wait_at(&self) -> u32 {
        self.steps / 3
    }
}

/// The payload the client sends to instance `index`.
fn go_value(index: u32) -> u64 {
    mix(u64::from(index) ^ 0x60_60)
}

static GEN: AtomicU64 = AtomicU64::new(0);
/// The test directory, in a worker.
static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
static NONCE: AtomicU64 = AtomicU64::new(0);
/// Steps whose first attempt in this process failed on purpose.
static FAILED_ONCE: Mutex<Option<HashSet<(String, u32)>>> = Mutex::new(None);

fn generation() -> u64 {
    GEN.load(Ordering::Relaxed)
}

/// A step body: its output depends on its input and on a nonce unique to
/// this attempt; it stays in flight up to 200 ms; for one input in four,
/// the first attempt fails (the retry runs it again).
async fn body(id: &str, step: u32, input: u64) -> Result<u64, String> {
    let g = generation();
    let nonce = (g << 32) | NONCE.fetch_add(1, Ordering::Relaxed);
    support::ledger(format!("BEGIN {id} {step} {input} {g}"));
    tokio::time::sleep(Duration::from_millis(mix(nonce) % 200)).await;
    if mix(input).is_multiple_of(4) {
        // Once per step across all processes (a marker file), so that
        // takeovers never exhaust the step's three attempts.
        let first = FAILED_ONCE
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert((id.to_string(), step))
            && std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(DIR.get().expect("dir").join(format!("fail-{id}-{step}")))
                .is_ok();
        if first {
            support::ledger(format!("FAIL {id} {step} {g}"));
            return Err("transient".into());
        }
    }
    let value = mix(input ^ mix(nonce));
    support::ledger(format!("END {id} {step} {value} {g}"));
    Ok(value)
}

/// The torture workflow: a chain of steps, a durable sleep after the first,
/// and a wait for event `go` (whose payload is mixed into the chain) a
/// third of the way.
#[durable]
pub async fn pg_torture(ctx: &Ctx, job: PJob) -> Result<u64, String> {
    // Every run (a claim, a wake-up) replays from here.
    support::ledger(format!("RUN {} {}", ctx.id(), generation()));
    let mut value = job.seed();
    for step in 0..job.steps {
        if step == 1 {
            ctx.sleep("nap", Duration::from_millis(300)).await;
        }
        if step == job.wait_at() {
            let go: u64 = wait_for!("go");
            value ^= go;
        }
        let out = step!("step", body(ctx.id(), step, value).await)?;
        support::ledger(format!("RET {} {step} {out} {}", ctx.id(), generation()));
        value = out;
    }
    Ok(value)
}

// -------------------------------------------------------------------- worker

/// The worker, in a child process: opens the engine on the schema (again
/// and again while PostgreSQL is down), starts the instances of its slot
/// that do not exist yet, and runs whatever it claims until the driver
/// creates the `stop` file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_torture_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let schema = std::env::var(SCHEMA_ENV).expect("schema");
    let work: Vec<u32> = std::env::var(WORK_ENV)
        .expect("work")
        .split(' ')
        .map(|p| p.parse().expect("work"))
        .collect();
    let (slot, gen_no, instances, steps) = (work[0], work[1], work[2], work[3]);
    GEN.store(u64::from(gen_no), Ordering::Relaxed);
    let _ = DIR.set(dir.clone());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .try_init();
    support::open_ledger(&dir);
    support::ledger(format!("GEN {gen_no} OPENING {}", std::process::id()));
    let engine = loop {
        let opened = Engine::builder()
            .postgres(url())
            .schema(&schema)
            .lease(LEASE)
            .poll_interval(Duration::from_millis(100))
            .register(pg_torture)
            .max_recoveries(u32::MAX)
            .open()
            .await;
        match opened {
            Ok(engine) => break engine,
            Err(e) => {
                eprintln!("open failed, again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    support::ledger(format!("GEN {gen_no} OPENED"));
    for index in (0..instances).filter(|i| i % WORKERS == slot) {
        let job = PJob { index, steps };
        let id = job.id();
        loop {
            match engine.status(&id).await {
                Err(Error::Usage(UsageError::NotFound { .. })) => {}
                Ok(_) => break,
                Err(e) => {
                    eprintln!("status {id}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            match engine.start(pg_torture, id.clone(), job.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    eprintln!("start {id}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    support::ledger(format!("GEN {gen_no} STARTED"));
    while !dir.join("stop").exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.shutdown().await;
    support::ledger(format!("GEN {gen_no} EXIT"));
}

// -------------------------------------------------------------------- driver

#[derive(Debug, Clone)]
struct Profile {
    name: &'static str,
    instances: u32,
    steps: u32,
    /// How long the chaos lasts (then the run finishes in peace).
    chaos: Duration,
}

impl Profile {
    fn from_env() -> Profile {
        match std::env::var("DURABLE_PG_TORTURE").as_deref() {
            Ok("long") => Profile {
                name: "long",
                instances: 5000,
                steps: 10,
                chaos: Duration::from_secs(900),
            },
            _ => Profile {
                name: "ci",
                instances: 600,
                steps: 10,
                chaos: Duration::from_secs(90),
            },
        }
    }
}

/// A worker process of the driver.
struct Proc {
    slot: u32,
    gen_no: u32,
    child: Child,
}

impl Drop for Proc {
    /// A worker left behind by a failing run goes with it.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, libc::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_path(dir: &Path, gen_no: u32) -> PathBuf {
    dir.join(format!("worker-{gen_no}.log"))
}

fn spawn_worker(dir: &Path, schema: &str, slot: u32, gen_no: u32, profile: &Profile) -> Proc {
    let log = std::fs::File::create(log_path(dir, gen_no)).expect("worker log");
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "pg_torture_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(SCHEMA_ENV, schema)
        .env(
            WORK_ENV,
            format!("{slot} {gen_no} {} {}", profile.instances, profile.steps),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn a worker");
    Proc {
        slot,
        gen_no,
        child,
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not
    // reaped yet.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Whether the restart of PostgreSQL is part of this run.
fn restart_pg() -> bool {
    std::env::var("DURABLE_PG_RESTART").is_ok_and(|v| v == "1") || std::env::var_os("CI").is_some()
}

fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Restarts the local PostgreSQL 15 with `-m immediate` (a crash for the
/// clients: every connection drops, uncommitted work is gone) and waits
/// until it accepts connections again.
fn restart_postgres() {
    let status = Command::new("pg_ctlcluster")
        .args(["15", "main", "restart", "-m", "immediate"])
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster restart failed: {status}");
    support::wait_until_blocking("PostgreSQL accepts connections again", || {
        if pg_ready() { Ok(()) } else { Err("not ready") }
    });
}

#[derive(Default, Debug)]
struct Chaos {
    kills: u32,
    zombies: u32,
    crashed: u32,
    restarts: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_torture_ci() {
    if std::env::var_os(DIR_ENV).is_some() {
        return;
    }
    let Some(db) = connect().await else {
        return;
    };
    let profile = Profile::from_env();
    let seed = support::seed_from_env("DURABLE_PG_TORTURE_SEED");
    let schema = format!(
        "durable_torture_{:016x}",
        mix(seed ^ u64::from(std::process::id()))
    );
    eprintln!(
        "pg torture {}: seed {seed} (replay with DURABLE_PG_TORTURE_SEED={seed}); {profile:?}; schema {schema}",
        profile.name
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    support::open_ledger(&dir);
    let result = drive(&dir, &schema, &profile, seed).await;
    let errors = match result {
        Ok(chaos) => {
            let errors = check(&dir, &schema, &profile, &chaos).await;
            if errors.is_empty() {
                eprintln!("pg torture {}: passed; {chaos:?}", profile.name);
            }
            errors
        }
        Err(e) => vec![e],
    };
    // The schema goes, pass or fail (the ledger and logs stay on failure),
    // over a new connection: a restart of PostgreSQL ended the first.
    drop(db);
    if let Some(db) = connect().await {
        let _ = db
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
    if !errors.is_empty() {
        let kept = support::keep(tmp);
        panic!(
            "pg torture {} failed with seed {seed}; ledger and worker logs kept at {}\n{}",
            profile.name,
            kept.display(),
            support::violations(&errors)
        );
    }
}

/// Runs the workers, the client and the chaos until every instance
/// completed, then stops the workers.
async fn drive(dir: &Path, schema: &str, profile: &Profile, seed: u64) -> Result<Chaos, String> {
    let mut rng = Rng::new(seed);
    let mut chaos = Chaos::default();
    let mut next_gen = 1u32;
    let mut procs: Vec<Proc> = Vec::new();
    for slot in 0..WORKERS {
        procs.push(spawn_worker(dir, schema, slot, next_gen, profile));
        next_gen += 1;
    }
    // The client: registers nothing, runs nothing.
    let client = support::wait_until("the client opens", async || {
        Engine::builder()
            .postgres(url())
            .schema(schema)
            .lease(LEASE)
            .listen(false)
            .open()
            .await
    })
    .await;
    let jobs: Vec<PJob> = (0..profile.instances)
        .map(|index| PJob {
            index,
            steps: profile.steps,
        })
        .collect();
    let mut sent: BTreeSet<u32> = BTreeSet::new();
    let mut done: BTreeSet<u32> = BTreeSet::new();
    let started = Instant::now();
    let guard = support::hang_guard();
    let mut next_chaos = Instant::now() + Duration::from_millis(500 + rng.below(1500));
    let restart_at = restart_pg().then(|| Instant::now() + profile.chaos.mul_f64(0.4));
    let mut restarted = false;
    let mut next_trace = Instant::now();
    while done.len() < jobs.len() {
        if started.elapsed() > guard + profile.chaos {
            for p in &mut procs {
                let _ = p.child.kill();
            }
            return Err(format!(
                "hang guard: {} of {} instances completed after {:.0?}",
                done.len(),
                jobs.len(),
                started.elapsed()
            ));
        }
        // A worker that ended by itself (it must not) is restarted.
        for p in &mut procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                eprintln!("worker gen {} ended by itself: {status}", p.gen_no);
                chaos.crashed += 1;
                support::ledger(format!("EXITED {}", p.gen_no));
                *p = spawn_worker(dir, schema, p.slot, next_gen, profile);
                next_gen += 1;
            }
        }
        // The client: statuses, and event `go` for those that wait (and
        // now and then for one that does not wait yet).
        for job in &jobs {
            if done.contains(&job.index) {
                continue;
            }
            let status = client.status(&job.id()).await;
            let early = rng.chance(0.002);
            match status {
                Ok(Status::Completed { .. }) => {
                    done.insert(job.index);
                }
                // The events trickle over the chaos window, so that work
                // goes on while workers die.
                Ok(Status::Waiting { .. })
                    if !sent.contains(&job.index)
                        && started.elapsed().as_secs_f64()
                            >= profile.chaos.as_secs_f64() * 0.8 * f64::from(job.index)
                                / f64::from(profile.instances) =>
                {
                    send_go(&client, job, &mut sent).await;
                }
                Ok(Status::Running { .. }) if early && !sent.contains(&job.index) => {
                    send_go(&client, job, &mut sent).await;
                }
                Ok(Status::Failed { .. }) | Ok(Status::Cancelled) => {
                    for p in &mut procs {
                        let _ = p.child.kill();
                    }
                    return Err(format!("instance {} ended {status:?}", job.id()));
                }
                _ => {}
            }
        }
        let chaotic = started.elapsed() < profile.chaos;
        if chaotic && Instant::now() >= next_chaos {
            if let Some(at) = restart_at
                && !restarted
                && Instant::now() >= at
            {
                restarted = true;
                support::ledger("PGRESTART");
                tokio::task::spawn_blocking(restart_postgres)
                    .await
                    .map_err(|e| e.to_string())?;
                chaos.restarts += 1;
            } else if (chaos.kills + chaos.zombies) % 3 != 2 {
                let p = &mut procs[rng.below(u64::from(WORKERS)) as usize];
                support::ledger(format!("KILL {}", p.gen_no));
                let _ = p.child.kill();
                let _ = p.child.wait();
                chaos.kills += 1;
                *p = spawn_worker(dir, schema, p.slot, next_gen, profile);
                next_gen += 1;
            } else {
                let i = rng.below(u64::from(WORKERS)) as usize;
                zombie(dir, schema, &mut procs[i], &mut chaos).await?;
            }
            next_chaos = Instant::now() + Duration::from_millis(500 + rng.below(3000));
        }
        if std::env::var_os("DURABLE_PG_TORTURE_TRACE").is_some() && Instant::now() >= next_trace {
            eprintln!(
                "{:.0?}: {} done, {} sent; {chaos:?}",
                started.elapsed(),
                done.len(),
                sent.len()
            );
            next_trace = Instant::now() + Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(dir.join("stop"), b"").map_err(|e| e.to_string())?;
    for p in &mut procs {
        support::wait_child(&mut p.child, "a worker stops", support::hang_guard())?;
    }
    client.shutdown().await;
    eprintln!(
        "pg torture {}: {} instances completed in {:.1?}",
        profile.name,
        jobs.len(),
        started.elapsed()
    );
    Ok(chaos)
}

async fn send_go(client: &Engine, job: &PJob, sent: &mut BTreeSet<u32>) {
    match client.send_event(job.id(), "go", go_value(job.index)).await {
        Ok(()) => {
            support::ledger(format!("SENT {}", job.id()));
            sent.insert(job.index);
        }
        // PostgreSQL restarting: sent again on the next pass (a second
        // `go` is never read: the workflow waits once).
        Err(e) => eprintln!("send_event {}: {e}", job.id()),
    }
}

/// SIGSTOPs worker `p` until the others declared it dead (its workers row
/// says so), then SIGCONTs it and waits until it noticed (its log says its
/// lease ran out).
async fn zombie(dir: &Path, schema: &str, p: &mut Proc, chaos: &mut Chaos) -> Result<(), String> {
    let pid = p.child.id() as i32;
    support::ledger(format!("STOP {}", p.gen_no));
    signal(&p.child, libc::SIGSTOP);
    let db = connect().await.ok_or("no PostgreSQL")?;
    let sql = format!("SELECT count(*) FROM {schema}.workers WHERE pid = $1 AND state = 0");
    let declared = support::wait_until("the stopped worker is declared dead", async || {
        match db.query_one(&sql, &[&pid]).await {
            Ok(row) if row.get::<_, i64>(0) == 0 => Ok(()),
            Ok(row) => Err(format!("{} live rows", row.get::<_, i64>(0))),
            Err(e) => Err(e.to_string()),
        }
    });
    declared.await;
    support::ledger(format!("CONT {}", p.gen_no));
    signal(&p.child, libc::SIGCONT);
    chaos.zombies += 1;
    let log = log_path(dir, p.gen_no);
    support::wait_until("the zombie notices its lease ran out", async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("lease ran out") || p.child.try_wait().ok().flatten().is_some() {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    Ok(())
}

// ------------------------------------------------------------------- checker

#[derive(Debug, Clone)]
struct Line {
    at: usize,
    kind: String,
    id: String,
    step: u32,
    value: u64,
    gen_no: u32,
}

fn parse(lines: &[String]) -> Vec<Line> {
    let mut out = Vec::new();
    for (at, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split(' ').collect();
        let line = match f.as_slice() {
            ["BEGIN", id, step, input, g]
            | ["END", id, step, input, g]
            | ["RET", id, step, input, g] => Line {
                at,
                kind: f[0].into(),
                id: id.to_string(),
                step: step.parse().unwrap_or(u32::MAX),
                value: input.parse().unwrap_or(0),
                gen_no: g.parse().unwrap_or(0),
            },
            ["FAIL", id, step, g] => Line {
                at,
                kind: "FAIL".into(),
                id: id.to_string(),
                step: step.parse().unwrap_or(u32::MAX),
                value: 0,
                gen_no: g.parse().unwrap_or(0),
            },
            ["RUN", id, g] => Line {
                at,
                kind: "RUN".into(),
                id: id.to_string(),
                step: 0,
                value: 0,
                gen_no: g.parse().unwrap_or(0),
            },
            ["STOP", g] | ["CONT", g] | ["KILL", g] => Line {
                at,
                kind: f[0].into(),
                id: String::new(),
                step: 0,
                value: 0,
                gen_no: g.parse().unwrap_or(0),
            },
            _ => continue,
        };
        out.push(line);
    }
    out
}

/// The invariants, from the ledger, the worker logs and the database.
async fn check(dir: &Path, schema: &str, profile: &Profile, chaos: &Chaos) -> Vec<String> {
    let mut errors = Vec::new();
    let raw = support::read_ledger_raw(dir);
    let torn = raw.iter().filter(|l| l.is_err()).count();
    let lines = parse(&raw.into_iter().flatten().collect::<Vec<_>>());
    let jobs: Vec<PJob> = (0..profile.instances)
        .map(|index| PJob {
            index,
            steps: profile.steps,
        })
        .collect();

    // (id, step) -> lines about it, in ledger order.
    let mut by_step: HashMap<(String, u32), Vec<&Line>> = HashMap::new();
    // (id, gen) -> where each run of it in that process began.
    let mut runs: HashMap<(String, u32), Vec<usize>> = HashMap::new();
    for l in lines.iter().filter(|l| !l.id.is_empty()) {
        if l.kind == "RUN" {
            runs.entry((l.id.clone(), l.gen_no)).or_default().push(l.at);
        } else {
            by_step.entry((l.id.clone(), l.step)).or_default().push(l);
        }
    }
    // Which run of its process a line belongs to: the last begun before it.
    let run_of = |l: &Line| -> usize {
        runs.get(&(l.id.clone(), l.gen_no))
            .map_or(0, |starts| starts.partition_point(|&at| at < l.at))
    };
    let mut reruns = 0u64;
    let mut retries = 0u64;
    let mut outputs: BTreeMap<String, u64> = BTreeMap::new();
    for job in &jobs {
        let id = job.id();
        let mut input = job.seed();
        for step in 0..job.steps {
            if step == job.wait_at() {
                input ^= go_value(job.index);
            }
            let empty = Vec::new();
            let ls = by_step.get(&(id.clone(), step)).unwrap_or(&empty);
            let rets: Vec<&&Line> = ls.iter().filter(|l| l.kind == "RET").collect();
            let Some(first_ret) = rets.first() else {
                errors.push(format!("{id} step {step}: never returned"));
                break;
            };
            // Acknowledged = returned: every replay returns the same value.
            if let Some(other) = rets.iter().find(|l| l.value != first_ret.value) {
                errors.push(format!(
                    "{id} step {step}: returned {} then {} (an acknowledged checkpoint was lost or rewritten)",
                    first_ret.value, other.value
                ));
            }
            // The value returned is the output of an attempt.
            if !ls
                .iter()
                .any(|l| l.kind == "END" && l.value == first_ret.value)
            {
                errors.push(format!(
                    "{id} step {step}: returned {}, which no attempt produced",
                    first_ret.value
                ));
            }
            for b in ls.iter().filter(|l| l.kind == "BEGIN") {
                // Every attempt got the input the chain gives.
                if b.value != input {
                    errors.push(format!(
                        "{id} step {step}: began with input {} instead of {input} (gen {})",
                        b.value, b.gen_no
                    ));
                }
                // A completed step never began again.
                if b.at > first_ret.at {
                    errors.push(format!(
                        "{id} step {step}: began again (gen {}) after it returned (gen {})",
                        b.gen_no, first_ret.gen_no
                    ));
                }
            }
            // Within one run (from a claim or wake-up to the end of that
            // replay) a body runs once, plus once per failure. A process
            // can run an instance more than once: when its lease ran out
            // (frozen, or the database was down longer than the lease) it
            // goes on as a new worker and may claim the instance again.
            let mut per_run: BTreeMap<(u32, usize), (u32, u32)> = BTreeMap::new();
            for l in ls.iter() {
                let e = per_run.entry((l.gen_no, run_of(l))).or_default();
                match l.kind.as_str() {
                    "BEGIN" => e.0 += 1,
                    "FAIL" => e.1 += 1,
                    _ => {}
                }
            }
            for ((g, run), (begins, fails)) in &per_run {
                if *begins > 1 + fails {
                    errors.push(format!(
                        "{id} step {step}: gen {g} began it {begins} times with {fails} failures in its run {run}"
                    ));
                }
                retries += u64::from(*fails);
            }
            let runs_begun = per_run.values().filter(|(b, _)| *b > 0).count() as u64;
            reruns += runs_begun.saturating_sub(1);
            input = first_ret.value;
        }
        outputs.insert(id, input);
    }

    // Zombies: a step of an instance taken over from them that ended after
    // they woke is a late write; it must have been refused: no RET of that
    // step follows in the zombie (a RET that did would also be caught
    // above, as a second value or a step begun again).
    let mut late_ends = 0u64;
    for stop in lines.iter().filter(|l| l.kind == "STOP") {
        let z = stop.gen_no;
        let Some(cont) = lines.iter().find(|l| l.kind == "CONT" && l.gen_no == z) else {
            continue;
        };
        let taken: BTreeSet<&str> = lines
            .iter()
            .filter(|l| l.at > stop.at && l.at < cont.at && l.gen_no != z && l.kind == "BEGIN")
            .map(|l| l.id.as_str())
            .collect();
        // Awake, it starts no step of an instance taken over from it,
        // unless it claimed the instance again (a new run) first.
        for begin in lines.iter().filter(|l| {
            l.at > cont.at && l.gen_no == z && l.kind == "BEGIN" && taken.contains(l.id.as_str())
        }) {
            let reclaimed = lines.iter().any(|o| {
                o.at > cont.at
                    && o.at < begin.at
                    && o.gen_no == z
                    && o.kind == "RUN"
                    && o.id == begin.id
            });
            if !reclaimed {
                errors.push(format!(
                    "zombie gen {z}: began step {} of {} after it woke, on the lease it had lost",
                    begin.step, begin.id
                ));
            }
        }
        for end in lines.iter().filter(|l| {
            l.at > cont.at && l.gen_no == z && l.kind == "END" && taken.contains(l.id.as_str())
        }) {
            let stale = lines
                .iter()
                .filter(|o| o.at < cont.at && o.gen_no == z && o.id == end.id && o.step == end.step)
                .any(|o| o.kind == "BEGIN");
            if !stale {
                continue;
            }
            late_ends += 1;
            if lines.iter().any(|o| {
                o.at > end.at
                    && o.gen_no == z
                    && o.kind == "RET"
                    && o.id == end.id
                    && o.step == end.step
                    && o.value == end.value
            }) {
                errors.push(format!(
                    "zombie gen {z}: {} step {} returned its late value {} after the instance was taken over",
                    end.id, end.step, end.value
                ));
            }
        }
    }
    // Every zombie noticed that its lease ran out; count refused writes.
    let mut lease_lost = 0u64;
    for stop in lines.iter().filter(|l| l.kind == "STOP") {
        let text = std::fs::read_to_string(log_path(dir, stop.gen_no)).unwrap_or_default();
        lease_lost += text.matches("lease lost").count() as u64;
        if !text.contains("lease ran out") {
            errors.push(format!(
                "zombie gen {}: its log does not say its lease ran out",
                stop.gen_no
            ));
        }
    }

    // The database: every instance completed with the chain's output (a
    // process that registers the workflow attaches: they are finished, so
    // it runs nothing).
    let engine = match Engine::builder()
        .postgres(url())
        .schema(schema)
        .lease(LEASE)
        .register(pg_torture)
        .open()
        .await
    {
        Ok(engine) => engine,
        Err(e) => {
            errors.push(format!("open the checker's engine: {e}"));
            return errors;
        }
    };
    for job in &jobs {
        let id = job.id();
        let result = match engine.attach(pg_torture, id.clone()).await {
            Ok(handle) => support::guarded("a finished instance's result", handle.result()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(Ok(value)) if Some(&value) == outputs.get(&id) => {}
            other => errors.push(format!(
                "{id}: ended {other:?}, the chain gives {:?}",
                outputs.get(&id)
            )),
        }
    }
    engine.shutdown().await;
    eprintln!(
        "pg torture {}: {} kills, {} zombies ({late_ends} late step ends, {lease_lost} \
         'lease lost' in their logs), {} PostgreSQL restarts, {} workers ended by themselves; \
         {reruns} re-runs after takeovers, {retries} retried failures, {torn} torn ledger lines",
        profile.name, chaos.kills, chaos.zombies, chaos.restarts, chaos.crashed,
    );
    errors
}
