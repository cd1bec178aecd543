//! The PostgreSQL benchmark: `cargo bench --features postgres,hooks --bench pg`
//! (add `-- --quick` for one run of each figure). Needs PostgreSQL at
//! `DURABLE_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! without it, says "skipped: no PostgreSQL".
//!
//! Side by side in one run, each figure the median of the runs:
//! 1. sequential: one instance at a time of the benchmark's 5-step workflow
//!    (~100-byte outputs): per-step latency, against one autocommitted
//!    INSERT into a hand-rolled checkpoint table over tokio-postgres, and
//!    against that INSERT fenced as any multi-process engine must fence a
//!    checkpoint (it selects the instance's owner row for its epoch and owner,
//!    under a share lock, so a takeover waits for it: what `durable`'s lone
//!    checkpoint does, with nothing else of the engine);
//! 2. concurrent: steps/s with 1, 16, 64 and 256 instances in flight in one
//!    worker process, against the table with as many tasks inserting (over
//!    a pool of up to 32 connections); then with 2 and 4 worker processes
//!    (children of this one) running what this process, a pure client,
//!    starts and awaits; each for 16 rounds of its in-flight count (at
//!    least 256 instances); in one worker process, also the CPU time per
//!    step of this process and of PostgreSQL's processes (when the server
//!    runs on this machine), for durable and for the table;
//! 3. failover: a worker process holding 16 running instances is killed
//!    with SIGKILL; the time until this process runs them all again (lease
//!    2 s: lease + grace + a reaper period bound it);
//! 4. event latency: a pure client sends an event to a parked instance; the
//!    time until the step after the wait begins, with and without the
//!    worker's listener;
//! 5. queues: dispatch overhead (enqueue -> first step began, against start
//!    -> first step began, one at a time), and a global concurrency limit of
//!    4 under 4 worker engines on one schema: the most instances ever seen
//!    in flight, beside the limit.
//!
//! `DURABLE_BENCH_ONLY=2` runs figure 2 only, `DURABLE_BENCH_ONLY=1,4` those
//! two (for profiling).

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use durable::prelude::*;

#[path = "queues/mod.rs"]
mod queues;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    text: String,
}

fn payload(step: u32, n: u64) -> Payload {
    Payload {
        text: format!("{step}:{n:020}:{}", "x".repeat(74)),
    }
}

async fn effect(step: u32, n: u64) -> Result<Payload, String> {
    Ok(payload(step, n))
}

static RECORD: AtomicBool = AtomicBool::new(false);
static LATENCIES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

fn lap(start: Instant) {
    if RECORD.load(Ordering::Relaxed) {
        LATENCIES.lock().unwrap().push(start.elapsed());
    }
}

// It measures time between steps on purpose.
#[durable(allow = "nondeterminism")]
async fn five(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let mut total = 0;
    for step in 1..=5u32 {
        let t = Instant::now();
        total += step!("s", effect(step, n).await)?.text.len();
        lap(t);
    }
    Ok(total as u64)
}

const WORKER_ENV: &str = "DURABLE_PG_BENCH_WORKER";

/// A worker process of figure 2: runs `five` on `schema` until killed.
async fn worker_child(schema: &str) {
    let _engine = builder(schema).register(five).open().await.unwrap();
    println!("READY");
    std::future::pending::<()>().await;
}

/// Steps/s of `five` run by `procs` worker processes, `in_flight` at a
/// time, started and awaited by this process as a pure client.
async fn ours_processes(schema: &str, procs: usize, instances: u64, in_flight: usize) -> f64 {
    let mut children = Vec::new();
    for _ in 0..procs {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(WORKER_ENV, schema)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(out).lines().next()
        })
        .await
        .unwrap();
        assert_eq!(ready.unwrap().unwrap(), "READY");
        children.push(child);
    }
    let client = builder(schema).open().await.unwrap();
    let rate = ours_concurrent(&client, instances, in_flight).await;
    client.shutdown().await;
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    rate
}

/// Instances of `hold` that began their first step in this process.
static HELD: AtomicU64 = AtomicU64::new(0);
const CHILD_ENV: &str = "DURABLE_PG_BENCH_HOLDER";

async fn hold(n: u64) -> Result<u64, String> {
    HELD.fetch_add(1, Ordering::SeqCst);
    if std::env::var_os(CHILD_ENV).is_some() {
        // The worker to be killed: holds the step until then.
        std::future::pending::<()>().await;
    }
    Ok(n)
}

#[durable]
async fn holder(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!("hold", hold(n).await)
}

/// When the step after the wait began, per instance.
static RESUMED: Mutex<Vec<(u64, Instant)>> = Mutex::new(Vec::new());

async fn resumed(n: u64) -> Result<u64, String> {
    RESUMED.lock().unwrap().push((n, Instant::now()));
    Ok(n)
}

#[durable(allow = "nondeterminism")]
async fn waiter(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let go: u64 = wait_for!("go");
    step!("resumed", resumed(n + go).await)
}

fn url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn connect() -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(client)
}

fn builder(schema: &str) -> durable::EngineBuilder {
    Engine::builder()
        .postgres(url())
        .schema(schema)
        .lease(Duration::from_secs(2))
}

/// The hand-rolled table: per-step latency (median) of one INSERT commit,
/// one at a time. With `fenced`, each instance first gets an owner row
/// (untimed), and each INSERT selects it by id, epoch and owner under a
/// share lock (`FOR SHARE`), as a fenced checkpoint must.
async fn table_sequential(schema: &str, steps: usize, fenced: bool) -> Duration {
    let client = connect().await.unwrap();
    let insert = client
        .prepare(&if fenced {
            format!(
                "INSERT INTO {schema}.hand (id, name, occ, value)
                 SELECT id, $2, $3, $4 FROM {schema}.hand_owner
                 WHERE id = $1 AND epoch = 1 AND owner = 7 FOR SHARE"
            )
        } else {
            format!("INSERT INTO {schema}.hand (id, name, occ, value) VALUES ($1, $2, $3, $4)")
        })
        .await
        .unwrap();
    let owner = client
        .prepare(&format!(
            "INSERT INTO {schema}.hand_owner (id, epoch, owner) VALUES ($1, 1, 7)"
        ))
        .await
        .unwrap();
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut lat = Vec::with_capacity(steps);
    for i in 0..steps {
        let id = format!("seq-{run}-{}", i / 5);
        if fenced && i % 5 == 0 {
            client.execute(&owner, &[&id]).await.unwrap();
        }
        let value = serde_json_like(i as u64);
        let t = Instant::now();
        let written = client
            .execute(&insert, &[&id, &"s", &((i % 5) as i32), &value])
            .await
            .unwrap();
        lat.push(t.elapsed().as_secs_f64());
        assert_eq!(written, 1, "the fence held");
    }
    Duration::from_secs_f64(median(lat))
}

/// CPU seconds used so far by this process, and by PostgreSQL's processes
/// if the server runs on this machine (`None` if none is found). The
/// server's count includes the backends that exited (the postmaster's
/// reaped children), so connections closed during a run still count.
fn cpu_seconds() -> (f64, Option<f64>) {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let of = |pid: &str, reaped: bool| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime is the
        // 12th, stime the 13th, then the reaped children's cutime, cstime.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let children = if reaped { ticks(13) + ticks(14) } else { 0.0 };
        (ticks(11) + ticks(12) + children) / tick
    };
    let mut server = None;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.bytes().all(|b| b.is_ascii_digit())
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        {
            *server.get_or_insert(0.0) += of(&pid, true);
        }
    }
    (of("self", false), server)
}

/// Runs `run` and returns its result with the CPU microseconds per step it
/// cost this process and PostgreSQL's processes.
async fn with_cpu<F: std::future::Future<Output = f64>>(
    steps: u64,
    run: F,
) -> (f64, f64, Option<f64>) {
    let (here, server) = cpu_seconds();
    let rate = run.await;
    let (here_after, server_after) = cpu_seconds();
    let per_step = |s: f64| s * 1e6 / steps as f64;
    (
        rate,
        per_step(here_after - here),
        server.zip(server_after).map(|(a, b)| per_step(b - a)),
    )
}

static RUN: AtomicU64 = AtomicU64::new(0);

fn serde_json_like(n: u64) -> Vec<u8> {
    payload(1, n).text.into_bytes()
}

/// The table: steps/s with `in_flight` tasks each inserting 5 steps per
/// instance, over up to 32 connections.
async fn table_concurrent(schema: &str, instances: u64, in_flight: usize) -> f64 {
    let conns = in_flight.min(32);
    let mut clients = Vec::new();
    for _ in 0..conns {
        let client = connect().await.unwrap();
        let insert = client
            .prepare(&format!(
                "INSERT INTO {schema}.hand (id, name, occ, value) VALUES ($1, $2, $3, $4)"
            ))
            .await
            .unwrap();
        clients.push(std::sync::Arc::new((client, insert)));
    }
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let permits = std::sync::Arc::new(Semaphore::new(in_flight));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..instances {
        let permit = std::sync::Arc::clone(&permits)
            .acquire_owned()
            .await
            .unwrap();
        let c = std::sync::Arc::clone(&clients[n as usize % conns]);
        tasks.push(tokio::spawn(async move {
            for occ in 0..5i32 {
                c.0.execute(
                    &c.1,
                    &[&format!("c-{run}-{n}"), &"s", &occ, &serde_json_like(n)],
                )
                .await
                .unwrap();
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (instances * 5) as f64 / start.elapsed().as_secs_f64()
}

/// Ours: per-step latency (median), one instance at a time.
async fn ours_sequential(engine: &Engine, instances: u64) -> Duration {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    LATENCIES.lock().unwrap().clear();
    RECORD.store(true, Ordering::SeqCst);
    for n in 0..instances {
        engine
            .run(five, format!("s-{run}-{n}"), n)
            .await
            .unwrap()
            .unwrap();
    }
    RECORD.store(false, Ordering::SeqCst);
    let lat: Vec<f64> = LATENCIES
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.as_secs_f64())
        .collect();
    Duration::from_secs_f64(median(lat))
}

/// Ours: steps/s of `five` started and awaited through `engine`,
/// `in_flight` at a time (run by `engine`, or by the workers when it is a
/// pure client).
async fn ours_concurrent(engine: &Engine, instances: u64, in_flight: usize) -> f64 {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let permits = std::sync::Arc::new(Semaphore::new(in_flight));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..instances {
        let permit = std::sync::Arc::clone(&permits)
            .acquire_owned()
            .await
            .unwrap();
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .run(five, format!("c-{run}-{n}"), n)
                .await
                .unwrap()
                .unwrap();
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (instances * 5) as f64 / start.elapsed().as_secs_f64()
}

/// Failover: a child worker starts 16 `holder` instances and holds them in
/// their step; it is killed; the time until this process began them all.
async fn failover(schema: &str, run: u64) -> Duration {
    const N: u64 = 16;
    HELD.store(0, Ordering::SeqCst);
    let engine = builder(schema).register(holder).open().await.unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, format!("{schema} {run} {N}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let line = tokio::task::spawn_blocking(move || lines.next())
            .await
            .unwrap();
        assert_eq!(line.unwrap().unwrap(), "HELD");
    }
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    while HELD.load(Ordering::SeqCst) < N {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = killed.elapsed();
    engine.shutdown().await;
    took
}

/// The child of [`failover`]: starts and holds its instances, says `HELD`.
async fn holder_child(spec: &str) {
    let parts: Vec<&str> = spec.split(' ').collect();
    let (schema, run, n): (&str, u64, u64) = (
        parts[0],
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    );
    let engine = builder(schema).register(holder).open().await.unwrap();
    for i in 0..n {
        let _ = engine
            .start(holder, format!("f-{run}-{i}"), i)
            .await
            .unwrap();
    }
    while HELD.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("HELD");
    std::future::pending::<()>().await;
}

/// Event latency: median of `count` sends by a pure client to parked
/// instances of a worker with (or without) its listener.
async fn event_latency(schema: &str, listen: bool, count: u64) -> Duration {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let worker = builder(schema)
        .listen(listen)
        .register(waiter)
        .open()
        .await
        .unwrap();
    let client = builder(schema).listen(false).open().await.unwrap();
    let mut handles = Vec::new();
    for n in 0..count {
        handles.push(
            worker
                .start(waiter, format!("e-{run}-{n}"), n)
                .await
                .unwrap(),
        );
    }
    for n in 0..count {
        let id = format!("e-{run}-{n}");
        loop {
            if let Ok(durable::Status::Waiting { .. }) = client.status(&id).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Parked (not only waiting in memory): the engine parks a wait after a
    // moment; give it that moment once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    RESUMED.lock().unwrap().clear();
    let mut lat = Vec::new();
    for n in 0..count {
        let sent = Instant::now();
        client
            .send_event(format!("e-{run}-{n}"), "go", 1_000_000u64)
            .await
            .unwrap();
        let at = loop {
            if let Some((_, at)) = RESUMED
                .lock()
                .unwrap()
                .iter()
                .find(|(m, _)| *m == n + 1_000_000)
            {
                break *at;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        lat.push(at.duration_since(sent).as_secs_f64());
    }
    for h in handles {
        h.result().await.unwrap().unwrap();
    }
    client.shutdown().await;
    worker.shutdown().await;
    Duration::from_secs_f64(median(lat))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        rt.block_on(holder_child(&spec));
        return;
    }
    if let Ok(schema) = std::env::var(WORKER_ENV) {
        rt.block_on(worker_child(&schema));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    rt.block_on(run(quick));
}

async fn run(quick: bool) {
    let Some(db) = connect().await else {
        println!("skipped: no PostgreSQL at {}", url());
        return;
    };
    let runs = if quick { 1 } else { 3 };
    let only: Option<Vec<u32>> = std::env::var("DURABLE_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let wanted = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    let schema = format!("durable_bench_{}", std::process::id());
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.hand (id text, name text, occ int, value bytea,
             PRIMARY KEY (id, name, occ));
         CREATE TABLE {schema}.hand_owner (id text PRIMARY KEY, epoch bigint, owner bigint)"
    ))
    .await
    .unwrap();
    println!(
        "durable on PostgreSQL against a hand-rolled checkpoint table ({runs} run(s) each, medians)"
    );

    let engine = builder(&schema).register(five).open().await.unwrap();
    if wanted(1) {
        let (mut t, mut f, mut o) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            t.push(table_sequential(&schema, 200, false).await.as_secs_f64());
            f.push(table_sequential(&schema, 200, true).await.as_secs_f64());
            o.push(ours_sequential(&engine, 40).await.as_secs_f64());
        }
        let (t, f, o) = (median(t), median(f), median(o));
        println!(
            "sequential per-step latency: durable {:.3} ms, table {:.3} ms, ratio {:.2}x; table fenced by a share lock on an owner row {:.3} ms ({:.2}x the table; durable {:.2}x it)",
            o * 1000.0,
            t * 1000.0,
            o / t,
            f * 1000.0,
            f / t,
            o / f
        );
    }
    // One worker process (this one), then 2 and 4 (children of this one,
    // which then only starts and awaits, as a pure client).
    let mut engine = Some(engine);
    for procs in [1usize, 2, 4].into_iter().filter(|_| wanted(2)) {
        if procs > 1
            && let Some(engine) = engine.take()
        {
            engine.shutdown().await;
        }
        let who = match procs {
            1 => "1 worker process".to_string(),
            n => format!("{n} worker processes (a pure client starts and awaits)"),
        };
        for in_flight in [1usize, 16, 64, 256] {
            // Long enough (16 rounds of the in-flight count, at least
            // 1,280 steps) that opening connections and preparing
            // statements does not decide the rate.
            let instances = (in_flight as u64 * 16).max(256);
            let steps = instances * 5;
            let (mut t, mut o) = (Vec::new(), Vec::new());
            // CPU µs per step: this process, PostgreSQL (durable, table).
            let (mut oc, mut os, mut tc, mut ts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..runs {
                let (rate, here, server) =
                    with_cpu(steps, table_concurrent(&schema, instances, in_flight)).await;
                t.push(rate);
                tc.push(here);
                ts.extend(server);
                o.push(match &engine {
                    Some(engine) => {
                        let (rate, here, server) =
                            with_cpu(steps, ours_concurrent(engine, instances, in_flight)).await;
                        oc.push(here);
                        os.extend(server);
                        rate
                    }
                    None => ours_processes(&schema, procs, instances, in_flight).await,
                });
            }
            let (t, o) = (median(t), median(o));
            println!(
                "{in_flight:>3} in flight, {who}: durable {o:>7.0} steps/s, table {t:>7.0} steps/s, ratio {:.2}x",
                o / t
            );
            if !oc.is_empty() && os.len() == oc.len() && ts.len() == tc.len() {
                println!(
                    "      CPU per step: durable {:.0} µs here + {:.0} µs PostgreSQL, table {:.0} µs here + {:.0} µs PostgreSQL",
                    median(oc),
                    median(os),
                    median(tc),
                    median(ts)
                );
            }
        }
    }
    if let Some(engine) = engine {
        engine.shutdown().await;
    }

    if wanted(3) {
        let mut f = Vec::new();
        for r in 0..runs {
            f.push(ms(failover(&schema, r as u64).await));
        }
        println!(
            "failover after SIGKILL of a worker holding 16 running instances (lease 2 s): {:.0} ms",
            median(f)
        );
    }
    if wanted(4) {
        for listen in [true, false] {
            let mut e = Vec::new();
            for _ in 0..runs {
                e.push(ms(event_latency(&schema, listen, 20).await));
            }
            println!(
                "event latency (send by a pure client -> step after the wait began), listener {}: {:.1} ms",
                if listen {
                    "on"
                } else {
                    "off (polling, 250 ms)"
                },
                median(e)
            );
        }
    }
    if wanted(5) {
        let limit = 4;
        let mut engines = Vec::new();
        for _ in 0..4 {
            engines.push(
                queues::register(builder(&schema).listen(true), limit)
                    .open()
                    .await
                    .unwrap(),
            );
        }
        let (start, enqueue) =
            queues::dispatch_overhead(&engines[0], "q", if quick { 30 } else { 100 }).await;
        println!(
            "queues: call -> first step began (median, one at a time, 4 workers listening): start {:.1} ms, enqueue {:.1} ms (dispatch overhead {:+.1} ms)",
            ms(start),
            ms(enqueue),
            ms(enqueue) - ms(start)
        );
        let mut max = 0;
        for r in 0..runs {
            max = max.max(queues::limit_under_workers(&engines, &format!("lim{r}"), 400).await);
        }
        println!(
            "queues: global concurrency limit {limit} under 4 worker engines, 400 instances x {runs} run(s): most ever in flight {max}{}",
            if max <= limit as usize {
                " (held)"
            } else {
                " (EXCEEDED)"
            }
        );
        for engine in engines {
            engine.shutdown().await;
        }
    }
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
