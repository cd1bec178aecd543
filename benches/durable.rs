//! The durable benchmark: `cargo bench --features hooks` (full) or `cargo bench --features hooks -- --quick`.
//!
//! One process, one table, side by side:
//! 1. floor: append a 100-byte record to a file and `fdatasync` it, per op;
//! 2. CPU ceiling: the same 5-step workflow as plain async fns, no durability;
//! 3. sequential: one instance at a time, 5 steps of ~100-byte outputs:
//!    per-step latency p50/p99 and the ratio to the floor;
//! 4. concurrent: instances x 5 steps with 1, 16, 64 and 256 in flight:
//!    durable steps/s and the ratio to the floor's ops/s;
//! 5. recovery: time from `open()` to all unfinished instances resumed (each
//!    has 2 of 5 steps done), the cost of a replayed step, and steps/s while
//!    they finish;
//! 6. memory: RSS and heap growth per instance parked in a `wait_for!`, the
//!    heap held beyond what the same number of finished instances hold, and
//!    the park table's own heap per instance;
//! 7. timers: instances started at once into an hour's `sleep!` (handles
//!    dropped): time until all are parked, and the reopen with them all
//!    parked (the load `tests/timers.rs` only checks the behaviour of);
//! 8. starting 2,000 instances at once: from a loop of `start` (a durable
//!    write each) and with one `start_many` (one durable write): steps/s
//!    until all finished, against the sequential step rate of scenario 3;
//!    beside them, sled's floor: sled alone (no log, no encoding, no task)
//!    inserting on one thread what those instances store, the most steps/s
//!    any run of them on this machine could reach;
//! 9. queues: dispatch overhead, the median time from `enqueue` to the first
//!    step's beginning against `start` to the first step in the same run
//!    (one instance at a time).
//!
//! Each figure is the median of several runs. Store directories live under
//! `DURABLE_BENCH_DIR` (default: the system temp dir); put it on the disk you
//! want measured.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    // ~100 bytes encoded.
    Payload {
        text: format!("{step}:{n:020}:{}", "x".repeat(74)),
    }
}

async fn effect(step: u32, n: u64) -> Result<Payload, String> {
    Ok(payload(step, n))
}

/// Step latencies recorded by `timed`, when enabled.
static RECORD: AtomicBool = AtomicBool::new(false);
static LATENCIES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

/// While set, `parking` waits in its third step.
static GATE: AtomicBool = AtomicBool::new(false);
/// Instances that reached the third step of `parking`.
static REACHED: AtomicU64 = AtomicU64::new(0);

// It measures time between steps on purpose.
#[durable(allow = "nondeterminism")]
async fn five(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let mut total = 0;
    let t = Instant::now();
    total += step!("s1", effect(1, n).await)?.text.len();
    lap(t);
    let t = Instant::now();
    total += step!("s2", effect(2, n).await)?.text.len();
    lap(t);
    let t = Instant::now();
    total += step!("s3", effect(3, n).await)?.text.len();
    lap(t);
    let t = Instant::now();
    total += step!("s4", effect(4, n).await)?.text.len();
    lap(t);
    let t = Instant::now();
    total += step!("s5", effect(5, n).await)?.text.len();
    lap(t);
    Ok(total as u64)
}

fn lap(start: Instant) {
    if RECORD.load(Ordering::Relaxed) {
        LATENCIES.lock().unwrap().push(start.elapsed());
    }
}

async fn park_at_third(n: u64) -> Result<Payload, String> {
    REACHED.fetch_add(1, Ordering::Relaxed);
    while GATE.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(payload(3, n))
}

// It measures time between steps on purpose.
#[durable(allow = "nondeterminism")]
async fn parking(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let t = Instant::now();
    step!("p1", effect(1, n).await)?;
    lap(t);
    let t = Instant::now();
    step!("p2", effect(2, n).await)?;
    lap(t);
    step!("p3", park_at_third(n).await)?;
    step!("p4", effect(4, n).await)?;
    step!("p5", effect(5, n).await)?;
    Ok(n)
}

async fn plain(n: u64) -> Result<u64, String> {
    let mut total = 0;
    for step in 1..=5 {
        total += std::hint::black_box(effect(step, n).await?).text.len();
    }
    Ok(total as u64)
}

struct Profile {
    runs: usize,
    floor_ops: usize,
    sequential_instances: u64,
    concurrent_instances: u64,
    recovery_instances: u64,
    memory_instances: u64,
    timer_instances: u64,
    batch_instances: u64,
}

fn bench_dir() -> PathBuf {
    std::env::var_os("DURABLE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn fresh_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("durable-bench-{name}-"))
        .tempdir_in(bench_dir())
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn take_latencies() -> Vec<Duration> {
    let mut v = std::mem::take(&mut *LATENCIES.lock().unwrap());
    v.sort();
    v
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// (p50, p99) of one 100-byte append + fdatasync.
fn floor(dir: &Path, ops: usize) -> (Duration, Duration) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("floor.log"))
        .unwrap();
    let record = [b'x'; 100];
    let mut lat = Vec::with_capacity(ops);
    for _ in 0..ops {
        let t = Instant::now();
        file.write_all(&record).unwrap();
        file.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

async fn open(dir: &Path) -> Engine {
    Engine::builder()
        .path(dir.join("store"))
        .register(five)
        .register(parking)
        .register(waiter)
        .register(finisher)
        .register(napper)
        .open()
        .await
        .unwrap()
}

/// Steps/s with `in_flight` instances at a time.
async fn concurrent(dir: &Path, instances: u64, in_flight: usize) -> f64 {
    let engine = open(dir).await;
    let permits = Arc::new(Semaphore::new(in_flight));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(instances as usize);
    for n in 0..instances {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .run(five, format!("c-{n}"), n)
                .await
                .unwrap()
                .unwrap();
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    engine.shutdown().await;
    (instances * 5) as f64 / secs
}

/// Steps/s of `instances` five-step instances started from one loop of
/// `start` (each start a durable write of its own) or with one
/// `start_many` (one durable write), from the first start until all
/// finished.
async fn start_batch(dir: &Path, instances: u64, many: bool) -> f64 {
    let engine = open(dir).await;
    let start = Instant::now();
    let handles = if many {
        engine
            .start_many(five, (0..instances).map(|n| (format!("b-{n}"), n)))
            .await
            .unwrap()
    } else {
        let mut handles = Vec::with_capacity(instances as usize);
        for n in 0..instances {
            handles.push(engine.start(five, format!("b-{n}"), n).await.unwrap());
        }
        handles
    };
    for handle in handles {
        handle.result().await.unwrap().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    if std::env::var_os("DURABLE_BENCH_GROUPS").is_some() {
        let (batches, groups) = engine.commit_stats();
        eprintln!("   ({batches} durable writes in {groups} group commits)");
    }
    engine.shutdown().await;
    (instances * 5) as f64 / secs
}

/// Sled's floor for scenario 8: the time sled 0.34.7 alone takes, on one
/// thread, to apply the writes `instances` five-step instances make in the
/// embedded store, in the order a run makes them (each creation: record,
/// active mark and creation index; five rounds of checkpoints; each end:
/// record, and the active mark and timer removed), with the stored sizes of
/// the benchmark's workflow (keys of 5 to 19 bytes, records of 58 bytes,
/// checkpoints of 202). No log, no fsync, no encoding, no task: what is left
/// when everything durable adds is taken away. Two threads inserting into
/// one sled tree are no faster than one on this kind of machine, so this
/// bounds the run from below.
fn sled_floor(dir: &Path, instances: u64) -> Duration {
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .flush_every_ms(None)
        .open()
        .unwrap();
    let tree = |name: &str| db.open_tree(name).unwrap();
    let (records, active, created) = (tree("instances"), tree("active"), tree("created"));
    let (checkpoints, timers) = (tree("checkpoints"), tree("timers"));
    let record = [7u8; 58];
    let checkpoint = [9u8; 202];
    let ids: Vec<String> = (0..instances).map(|n| format!("b-{n}")).collect();
    let start = Instant::now();
    for id in &ids {
        records.insert(id.as_bytes(), &record[..]).unwrap();
        active
            .insert(id.as_bytes(), &0u32.to_be_bytes()[..])
            .unwrap();
        let mut key = 1_764_547_200_000u64.to_be_bytes().to_vec();
        key.extend_from_slice(id.as_bytes());
        created.insert(key, &[][..]).unwrap();
    }
    for step in 1..=5u32 {
        for id in &ids {
            let mut key = (id.len() as u32).to_be_bytes().to_vec();
            key.extend_from_slice(id.as_bytes());
            key.extend_from_slice(&2u32.to_be_bytes());
            key.extend_from_slice(format!("s{step}").as_bytes());
            key.extend_from_slice(&0u32.to_be_bytes());
            checkpoints.insert(key, &checkpoint[..]).unwrap();
        }
    }
    for id in &ids {
        records.insert(id.as_bytes(), &record[..]).unwrap();
        active.remove(id.as_bytes()).unwrap();
        timers.remove(id.as_bytes()).unwrap();
    }
    start.elapsed()
}

struct Recovery {
    resume: Duration,
    replay_p50: Duration,
    finish_steps_per_sec: f64,
}

async fn recovery(dir: &Path, instances: u64) -> Recovery {
    GATE.store(true, Ordering::SeqCst);
    REACHED.store(0, Ordering::SeqCst);
    let engine = open(dir).await;
    let permits = Arc::new(Semaphore::new(512));
    let mut tasks = Vec::new();
    for n in 0..instances {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let handle = engine.start(parking, format!("r-{n}"), n).await.unwrap();
            drop(permit);
            handle
        }));
    }
    let mut handles = Vec::new();
    for t in tasks {
        handles.push(t.await.unwrap());
    }
    while REACHED.load(Ordering::SeqCst) < instances {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.shutdown().await;
    drop(handles);

    REACHED.store(0, Ordering::SeqCst);
    take_latencies();
    RECORD.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let engine = open(dir).await;
    assert_eq!(engine.recovery().resumed as u64, instances);
    while REACHED.load(Ordering::SeqCst) < instances {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let resume = start.elapsed();
    RECORD.store(false, Ordering::SeqCst);
    let replays = take_latencies();

    let finish = Instant::now();
    GATE.store(false, Ordering::SeqCst);
    let mut handles = Vec::new();
    for n in 0..instances {
        handles.push(engine.attach(parking, format!("r-{n}")).await.unwrap());
    }
    for h in handles {
        h.result().await.unwrap().unwrap();
    }
    let finish_steps_per_sec = (instances * 3) as f64 / finish.elapsed().as_secs_f64();
    engine.shutdown().await;
    Recovery {
        resume,
        replay_p50: percentile(&replays, 0.5),
        finish_steps_per_sec,
    }
}

/// Bytes per instance: (RSS growth, heap growth) while `instances` are
/// parked in a `wait_for!`, and the heap growth of the same number of
/// instances that finished after the same steps and writes (the store's cache
/// and records, which parked instances share), so that the difference is what
/// parking itself holds.
async fn memory(dir: &Path, instances: u64) -> (f64, f64, f64) {
    let engine = open(dir).await;
    let heap_before = HEAP.load(Ordering::SeqCst);
    let rss_before = rss_bytes();
    start_all(&engine, "m", instances, true).await;
    while (engine.parked_count() as u64) < instances {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let parked_heap = HEAP.load(Ordering::SeqCst).saturating_sub(heap_before);
    let parked_rss = rss_bytes().saturating_sub(rss_before) as usize;
    engine.shutdown().await;

    let engine = open(&dir.join("finished")).await;
    let heap_before = HEAP.load(Ordering::SeqCst);
    start_all(&engine, "f", instances, false).await;
    let finished_heap = HEAP.load(Ordering::SeqCst).saturating_sub(heap_before);
    engine.shutdown().await;
    let per = |b: usize| b as f64 / instances as f64;
    // The engine's own share: the park table alone, built the same way.
    let heap_before = HEAP.load(Ordering::SeqCst);
    let table = durable::__bench::park_table("m", instances as usize);
    let table_heap = HEAP.load(Ordering::SeqCst).saturating_sub(heap_before);
    drop(table);
    println!(
        "   the park table alone holds {:.0} B per parked instance; {} finished instances hold {:.1} MiB of heap in all (the store's bounded cache)",
        per(table_heap),
        instances,
        finished_heap as f64 / (1 << 20) as f64
    );
    (
        per(parked_rss),
        per(parked_heap),
        per(parked_heap) - per(finished_heap),
    )
}

/// Starts `instances` of `waiter` (parking) or `finisher`, 256 at a time,
/// dropping their handles, and waits until each is parked or finished.
async fn start_all(engine: &Engine, prefix: &str, instances: u64, park: bool) {
    let permits = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    for n in 0..instances {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let engine = engine.clone();
        let id = format!("{prefix}-{n}");
        tasks.push(tokio::spawn(async move {
            if park {
                drop(engine.start(waiter, id, n).await.unwrap());
            } else {
                engine.run(finisher, id, n).await.unwrap().unwrap();
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[durable]
async fn waiter(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!("w1", effect(1, n).await)?;
    step!("w2", effect(2, n).await)?;
    let go: u64 = wait_for!("go");
    Ok(go)
}

#[durable]
async fn napper(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!("w1", effect(1, n).await)?;
    sleep!("nap", Duration::from_secs(3600));
    Ok(n)
}

/// Starts `instances` of `napper` at once (handles dropped) and returns the
/// time until all are parked in their sleep, then the time to reopen the
/// store with all of them parked.
async fn timers(dir: &Path, instances: u64) -> (Duration, Duration) {
    let engine = open(dir).await;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(instances as usize);
    for n in 0..instances {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            drop(engine.start(napper, format!("t-{n}"), n).await.unwrap());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    while (engine.parked_count() as u64) < instances {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let parked = start.elapsed();
    engine.shutdown().await;
    let start = Instant::now();
    let engine = open(dir).await;
    let reopen = start.elapsed();
    assert_eq!(engine.recovery().parked as u64, instances);
    engine.shutdown().await;
    (parked, reopen)
}

#[durable]
async fn finisher(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!("w1", effect(1, n).await)?;
    step!("w2", effect(2, n).await)?;
    Ok(n)
}

/// Heap bytes in use, counted by [`Counting`].
static HEAP: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes in use.
struct Counting;

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("DURABLE_BENCH_QUICK").is_some();
    let p = if quick {
        Profile {
            runs: 1,
            floor_ops: 300,
            sequential_instances: 40,
            concurrent_instances: 500,
            recovery_instances: 2_000,
            memory_instances: 2_000,
            timer_instances: 2_000,
            batch_instances: 2_000,
        }
    } else {
        Profile {
            runs: 3,
            floor_ops: 2_000,
            sequential_instances: 400,
            concurrent_instances: 10_000,
            recovery_instances: 100_000,
            memory_instances: 100_000,
            timer_instances: 10_000,
            batch_instances: 2_000,
        }
    };
    // `DURABLE_BENCH_MEMORY=N` sets scenario 6's instance count.
    let mut p = p;
    if let Some(n) = std::env::var("DURABLE_BENCH_MEMORY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        p.memory_instances = n;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(p, quick));
}

async fn run(p: Profile, quick: bool) {
    // `DURABLE_BENCH_ONLY=4` runs the floor and scenario 4 only (for
    // profiling); `DURABLE_BENCH_ONLY=3,8` the floor and those two.
    let only: Option<Vec<u32>> = std::env::var("DURABLE_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let want = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    println!(
        "durable benchmark ({} profile)",
        if quick { "quick" } else { "full" }
    );
    println!(
        "machine: {} cores; bench dir {} on {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        bench_dir().display(),
        filesystem(&bench_dir()),
    );

    // The sequential step latency, once scenario 3 measured it.
    let mut sequential: Option<f64> = None;
    let mut floors = Vec::new();
    let mut floor99 = Vec::new();
    for _ in 0..p.runs {
        let d = fresh_dir("floor");
        let (p50, p99) = floor(d.path(), p.floor_ops);
        floors.push(p50.as_secs_f64());
        floor99.push(p99.as_secs_f64());
    }
    let floor_s = median(floors);
    println!(
        "\n1. floor: 100-byte append + fdatasync    p50 {:>8.1} µs   p99 {:>8.1} µs   ({:.0} ops/s)",
        floor_s * 1e6,
        median(floor99) * 1e6,
        1.0 / floor_s
    );

    if want(2) {
        let mut ceilings = Vec::new();
        for _ in 0..p.runs {
            let n = 200_000u64;
            let start = Instant::now();
            for i in 0..n {
                plain(i).await.unwrap();
            }
            ceilings.push((n * 5) as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "2. CPU ceiling: plain async fns          {:>10.0} steps/s",
            median(ceilings)
        );
    }
    if want(3) {
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        for _ in 0..p.runs {
            let d = fresh_dir("seq");
            let engine = open(d.path()).await;
            take_latencies();
            RECORD.store(true, Ordering::SeqCst);
            for n in 0..p.sequential_instances {
                engine
                    .run(five, format!("s-{n}"), n)
                    .await
                    .unwrap()
                    .unwrap();
            }
            RECORD.store(false, Ordering::SeqCst);
            let lat = take_latencies();
            p50s.push(percentile(&lat, 0.5).as_secs_f64());
            p99s.push(percentile(&lat, 0.99).as_secs_f64());
            engine.shutdown().await;
        }
        let seq = median(p50s);
        sequential = Some(seq);
        println!(
            "3. sequential step latency              p50 {:>8.1} µs   p99 {:>8.1} µs   ratio to floor {:.2}x",
            seq * 1e6,
            median(p99s) * 1e6,
            seq / floor_s
        );
    }
    if want(4) {
        println!(
            "4. concurrent ({} instances x 5 steps)",
            p.concurrent_instances
        );
        // `DURABLE_BENCH_IN_FLIGHT=256` (a list) runs only those levels.
        let levels: Vec<usize> = std::env::var("DURABLE_BENCH_IN_FLIGHT")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 16, 64, 256]);
        for in_flight in levels {
            let mut rates = Vec::new();
            for _ in 0..p.runs {
                let d = fresh_dir("conc");
                rates.push(concurrent(d.path(), p.concurrent_instances, in_flight).await);
            }
            let rate = median(rates);
            println!(
                "   {in_flight:>3} in flight                          {rate:>10.0} steps/s   ratio to floor ops/s {:.2}x",
                rate * floor_s
            );
        }
    }
    if want(5) {
        let mut resumes = Vec::new();
        let mut replays = Vec::new();
        let mut finishes = Vec::new();
        for _ in 0..p.runs {
            let d = fresh_dir("rec");
            let r = recovery(d.path(), p.recovery_instances).await;
            resumes.push(r.resume.as_secs_f64());
            replays.push(r.replay_p50.as_secs_f64());
            finishes.push(r.finish_steps_per_sec);
        }
        println!(
            "5. recovery of {} instances (2 of 5 steps done): open -> all resumed {:.2} s; replayed step p50 {:.1} µs; finishing {:.0} steps/s",
            p.recovery_instances,
            median(resumes),
            median(replays) * 1e6,
            median(finishes)
        );
    }
    if want(6) {
        let (mut rss, mut heap, mut beyond) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..p.runs {
            let d = fresh_dir("mem");
            let (r, h, b) = memory(d.path(), p.memory_instances).await;
            rss.push(r);
            heap.push(h);
            beyond.push(b);
        }
        println!(
            "6. memory: {} instances parked in wait_for!: {:.0} B RSS, {:.0} B heap per instance; {:.0} B heap beyond finished instances",
            p.memory_instances,
            median(rss),
            median(heap),
            median(beyond)
        );
    }
    if want(7) {
        let (mut parks, mut reopens) = (Vec::new(), Vec::new());
        for _ in 0..p.runs {
            let d = fresh_dir("timers");
            let (park, reopen) = timers(d.path(), p.timer_instances).await;
            parks.push(park.as_secs_f64());
            reopens.push(reopen.as_secs_f64());
        }
        let park = median(parks);
        println!(
            "7. timers: {} instances started at once into a 1-hour sleep!: all parked in {:.2} s ({:.0} instances/s); reopen with all parked {:.2} s",
            p.timer_instances,
            park,
            p.timer_instances as f64 / park,
            median(reopens)
        );
    }
    if want(8) {
        println!(
            "8. starting {} five-step instances at once, first start -> all finished",
            p.batch_instances
        );
        let against_sequential = |rate: f64| match sequential {
            Some(seq) => format!("{:.1}x the sequential step rate", rate * seq),
            None => "(scenario 3 not run)".to_string(),
        };
        for (label, many) in [("a loop of start", false), ("one start_many", true)] {
            let mut rates = Vec::new();
            for _ in 0..p.runs {
                let d = fresh_dir("batch");
                rates.push(start_batch(d.path(), p.batch_instances, many).await);
            }
            let rate = median(rates);
            let against_sequential = against_sequential(rate);
            println!(
                "   {label:<16}                    {rate:>10.0} steps/s   {against_sequential}; ratio to floor ops/s {:.2}x",
                rate * floor_s
            );
        }
        let mut floors = Vec::new();
        for _ in 0..p.runs {
            let d = fresh_dir("sled-floor");
            floors.push(sled_floor(d.path(), p.batch_instances).as_secs_f64());
        }
        let floor = median(floors);
        let rate = (p.batch_instances * 5) as f64 / floor;
        println!(
            "   sled alone, one thread (floor)  {:>6.1} ms  {rate:>10.0} steps/s   at most {}",
            floor * 1000.0,
            against_sequential(rate)
        );
    }
    if want(9) {
        let d = fresh_dir("queues");
        let engine = queues::register(Engine::builder().path(d.path()), 4)
            .open()
            .await
            .unwrap();
        let (start, enqueue) =
            queues::dispatch_overhead(&engine, "q", if quick { 50 } else { 300 }).await;
        println!(
            "9. queues: call -> first step began (median, one at a time): start {:.3} ms, enqueue {:.3} ms (dispatch overhead {:+.3} ms)",
            start.as_secs_f64() * 1000.0,
            enqueue.as_secs_f64() * 1000.0,
            (enqueue.as_secs_f64() - start.as_secs_f64()) * 1000.0
        );
        engine.shutdown().await;
    }
}

fn filesystem(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} ({})", f[2], f[1])))
        })
        .max()
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}
