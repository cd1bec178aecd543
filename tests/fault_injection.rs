//! Fault injection: guards what the engine does when its store fails. A
//! `Store` wrapper driven by a seed makes one apply fail before anything is
//! written, or after everything was (durably) written, or after only part
//! of a group of batches, or after the writes became visible but before
//! they became durable (a failed flush: gone after a reopen), or runs out of
//! space for good; and it fails or corrupts (truncates) reads. For every
//! seed, two phases run with faults on the same data, then a reopen without
//! faults must finish everything. Checked each time:
//!
//! - a step that returned was durable: its body never runs again and every
//!   later replay returns the same value (so no step was reported complete
//!   whose write failed), and every attempt of a step got the same input;
//! - no instance is marked failed for a store fault: errors are store errors
//!   or leave the instance blocked, never `Failed`;
//! - once an apply failed, no instance begins more than the one step body
//!   that may already have passed the check (no new steps are scheduled
//!   while the store is failing);
//! - nothing hangs (an open, the instances or a shutdown still pending when
//!   the hang guard runs out); after the fault clears and the engine
//!   reopens, every instance completes with the output its chain of steps
//!   gives.
//!
//! Thousands of seeds run over an in-memory store in a few seconds, and a
//! few dozen over the real sled store. `DURABLE_FAULT_SEED` replays a seed
//! base, `DURABLE_FAULT_SEEDS` sets the number of seeds.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable::prelude::*;
use durable::store::{Batch, Entries, SledStore, Store, Tree};
use durable::{Status, StoreError};
use serde::{Deserialize, Serialize};
use support::{Rng, mix};

// ------------------------------------------------------------ the workflow

/// What happened, in order, for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A body began: (step, input, global sequence number).
    Begin(u32, u64, u64),
    /// `step!` returned: (step, value).
    Ret(u32, u64),
}

type Log = Arc<Mutex<Vec<Event>>>;

/// Every instance's events, by instance id (ids are unique per seed).
static LOGS: Mutex<Option<HashMap<String, Log>>> = Mutex::new(None);
/// Orders body starts against store failures across threads.
static SEQ: AtomicU64 = AtomicU64::new(0);
static NONCE: AtomicU64 = AtomicU64::new(1);

/// What the faults did, over all seeds: write faults injected, read faults
/// injected, instances that finished in a faulty phase, instances that
/// reported an error in one, and instances that had to wait for the reopen.
static STATS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
const WRITE_FAULTS: usize = 0;
const READ_FAULTS: usize = 1;
const FINISHED_DESPITE: usize = 2;
const ERRORS_REPORTED: usize = 3;
const FINISHED_AFTER: usize = 4;

fn count(stat: usize) {
    STATS[stat].fetch_add(1, Ordering::Relaxed);
}

fn stats() -> String {
    let v: Vec<u64> = STATS.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    format!(
        "{} write faults and {} read faults injected; in faulty phases {} instances finished and {} reported a store error",
        v[WRITE_FAULTS], v[READ_FAULTS], v[FINISHED_DESPITE], v[ERRORS_REPORTED]
    )
}

fn log_of(id: &str) -> Log {
    let mut logs = LOGS.lock().unwrap();
    Arc::clone(
        logs.get_or_insert_with(HashMap::new)
            .entry(id.to_string())
            .or_default(),
    )
}

fn forget(id: &str) {
    if let Some(logs) = LOGS.lock().unwrap().as_mut() {
        logs.remove(id);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Job {
    seed: u64,
    steps: u32,
}

async fn link(id: &str, step: u32, input: u64) -> Result<u64, String> {
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    log_of(id)
        .lock()
        .unwrap()
        .push(Event::Begin(step, input, seq));
    tokio::task::yield_now().await;
    Ok(mix(input ^ mix(nonce)))
}

#[durable]
async fn chain(ctx: &Ctx, job: Job) -> Result<u64, String> {
    let mut value = job.seed;
    for step in 0..job.steps {
        value = step!("link", link(ctx.id(), step, value).await)?;
        log_of(ctx.id())
            .lock()
            .unwrap()
            .push(Event::Ret(step, value));
    }
    Ok(value)
}

// --------------------------------------------------------- the faulty store

type Trees = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

fn empty_trees() -> Trees {
    vec![BTreeMap::new(); Tree::ALL.len()]
}

/// An in-memory store: `disk` survives a reopen, `view` is what this
/// "process" reads (the disk plus writes whose flush failed).
struct Memory {
    disk: Arc<Mutex<Trees>>,
    view: Mutex<Trees>,
}

impl Memory {
    fn write(trees: &mut Trees, batches: &[Batch]) {
        for batch in batches {
            for op in &batch.ops {
                let tree = &mut trees[op.tree.index()];
                match &op.value {
                    Some(v) => tree.insert(op.key.clone(), v.clone()),
                    None => tree.remove(&op.key),
                };
            }
        }
    }
}

enum Backend {
    Memory(Memory),
    Sled(Box<SledStore>),
}

impl Backend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Backend::Memory(m) => Ok(m.view.lock().unwrap()[tree.index()].get(key).cloned()),
            Backend::Sled(s) => s.get(tree, key),
        }
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Entries, StoreError> {
        match self {
            Backend::Memory(m) => Ok(m.view.lock().unwrap()[tree.index()]
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()),
            Backend::Sled(s) => s.scan_prefix(tree, prefix),
        }
    }

    /// Writes durably.
    fn apply(&self, batches: &[Batch]) -> Result<(), StoreError> {
        match self {
            Backend::Memory(m) => {
                let mut disk = m.disk.lock().unwrap();
                Memory::write(&mut disk, batches);
                Memory::write(&mut m.view.lock().unwrap(), batches);
                Ok(())
            }
            Backend::Sled(s) => s.apply(batches),
        }
    }

    /// Writes so that this process sees the writes but a reopen does not
    /// (sled cannot lose them on purpose: they are written for good).
    fn apply_volatile(&self, batches: &[Batch]) -> Result<(), StoreError> {
        match self {
            Backend::Memory(m) => {
                Memory::write(&mut m.view.lock().unwrap(), batches);
                Ok(())
            }
            Backend::Sled(s) => s.apply(batches),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFault {
    /// The apply fails before anything is written.
    FailBefore,
    /// Everything is written durably, yet the apply reports an error.
    FailAfter,
    /// Only the first batch of the group is written (whole), then an error.
    Partial,
    /// The writes become visible but the flush fails: a reopen loses them.
    FlushFails,
    /// No space left: this apply and every later one fail before writing.
    NoSpace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFault {
    /// The read fails.
    Error,
    /// The read returns the stored bytes cut short.
    Truncate,
}

/// The faults of one phase, drawn from a seed.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    /// The apply number (from 1) that fails, and how.
    write: Option<(u64, WriteFault)>,
    /// The read number (from 1) from which `count` reads fail, and how.
    read: Option<(u64, ReadFault, u64)>,
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        let kinds = [
            WriteFault::FailBefore,
            WriteFault::FailAfter,
            WriteFault::Partial,
            WriteFault::FlushFails,
            WriteFault::NoSpace,
        ];
        let write = rng
            .chance(0.85)
            .then(|| (1 + rng.below(16), kinds[rng.below(5) as usize]));
        let read = rng.chance(0.35).then(|| {
            let kind = if rng.chance(0.5) {
                ReadFault::Error
            } else {
                ReadFault::Truncate
            };
            (1 + rng.below(30), kind, 1 + rng.below(3))
        });
        Plan { write, read }
    }
}

/// The wrapper: a backend with the faults of one phase.
struct FaultyStore {
    backend: Backend,
    plan: Plan,
    applies: AtomicU64,
    reads: AtomicU64,
    full: AtomicBool,
    /// The sequence number at the first failed apply (u64::MAX: none yet).
    failed_at: Arc<AtomicU64>,
}

impl FaultyStore {
    fn new(backend: Backend, plan: Plan) -> (FaultyStore, Arc<AtomicU64>) {
        let failed_at = Arc::new(AtomicU64::new(u64::MAX));
        let store = FaultyStore {
            backend,
            plan,
            applies: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            full: AtomicBool::new(false),
            failed_at: Arc::clone(&failed_at),
        };
        (store, failed_at)
    }

    fn read_fault(&self) -> Option<ReadFault> {
        let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
        match self.plan.read {
            Some((at, kind, reads)) if n >= at && n < at + reads => {
                count(READ_FAULTS);
                Some(kind)
            }
            _ => None,
        }
    }

    fn fail(&self, reason: &str) -> StoreError {
        count(WRITE_FAULTS);
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .failed_at
            .compare_exchange(u64::MAX, seq, Ordering::SeqCst, Ordering::SeqCst);
        StoreError::io_message("write", reason)
    }
}

fn truncate(mut value: Vec<u8>) -> Vec<u8> {
    value.truncate(value.len() / 2);
    value
}

impl Store for FaultyStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let fault = self.read_fault();
        let value = self.backend.get(tree, key)?;
        match fault {
            Some(ReadFault::Error) => Err(StoreError::io_message("read", "injected read error")),
            Some(ReadFault::Truncate) => Ok(value.map(truncate)),
            None => Ok(value),
        }
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Entries, StoreError> {
        let fault = self.read_fault();
        let entries = self.backend.scan_prefix(tree, prefix)?;
        match fault {
            Some(ReadFault::Error) => Err(StoreError::io_message("scan", "injected read error")),
            Some(ReadFault::Truncate) => {
                Ok(entries.into_iter().map(|(k, v)| (k, truncate(v))).collect())
            }
            None => Ok(entries),
        }
    }

    fn apply(&self, batches: &[Batch]) -> Result<(), StoreError> {
        let n = self.applies.fetch_add(1, Ordering::SeqCst) + 1;
        if self.full.load(Ordering::SeqCst) {
            return Err(self.fail("No space left on device (os error 28)"));
        }
        match self.plan.write {
            Some((at, kind)) if at == n => match kind {
                WriteFault::FailBefore => Err(self.fail("injected failure before the write")),
                WriteFault::FailAfter => {
                    self.backend.apply(batches)?;
                    Err(self.fail("injected failure after the write"))
                }
                WriteFault::Partial => {
                    self.backend.apply(&batches[..1])?;
                    Err(self.fail("injected failure after part of the group"))
                }
                WriteFault::FlushFails => {
                    self.backend.apply_volatile(batches)?;
                    Err(self.fail("injected flush failure"))
                }
                WriteFault::NoSpace => {
                    self.full.store(true, Ordering::SeqCst);
                    Err(self.fail("No space left on device (os error 28)"))
                }
            },
            _ => self.backend.apply(batches),
        }
    }
}

// ------------------------------------------------------------- the harness

const INSTANCES: u64 = 3;
const STEPS: u32 = 4;

/// Marks a violation that is a hang: after one, no further seeds start.
const HANG: &str = "hang guard";

fn hung(what: &str) -> String {
    format!(
        "{HANG}: {what} still pending after {:.1?}",
        support::hang_guard()
    )
}

/// Where one seed's data lives between phases.
enum Data {
    Memory(Arc<Mutex<Trees>>),
    Sled(PathBuf),
}

impl Data {
    fn backend(&self) -> Backend {
        match self {
            Data::Memory(disk) => Backend::Memory(Memory {
                view: Mutex::new(disk.lock().unwrap().clone()),
                disk: Arc::clone(disk),
            }),
            // The store closes when the engine's last reference drops, which
            // can trail `shutdown` when another thread drops a handle at the
            // same time: wait until it is released.
            Data::Sled(path) => Backend::Sled(Box::new(support::wait_until_blocking(
                "the previous engine to release the sled store",
                || match SledStore::open(path) {
                    Ok(store) => Ok(store),
                    Err(locked @ StoreError::Locked { .. }) => Err(locked),
                    Err(e) => panic!("reopen the sled store: {e:?}"),
                },
            ))),
        }
    }
}

/// Errors an instance may report while its store fails: store errors, or
/// errors that leave it blocked (resumable). Never a failure.
fn acceptable(e: &Error) -> bool {
    matches!(
        e,
        Error::Store(_)
            | Error::Replay(ReplayError::CheckpointDecode { .. })
            | Error::Replay(ReplayError::ValueDecode { .. })
            | Error::Instance(InstanceError::Blocked { .. })
            | Error::Instance(InstanceError::ShutDown { .. })
    )
}

/// One engine lifetime over `data` with `plan`'s faults; pushes violations.
async fn phase(
    data: &Data,
    plan: Plan,
    ids: &[(String, Job)],
    final_phase: bool,
    errors: &mut Vec<String>,
) {
    let (store, failed_at) = FaultyStore::new(data.backend(), plan);
    let opened = tokio::time::timeout(
        support::hang_guard(),
        Engine::builder()
            .store(store)
            .register(chain)
            .retry_policy(
                RetryPolicy::default()
                    .max_attempts(2)
                    .initial_delay(Duration::from_millis(1)),
            )
            .open(),
    )
    .await;
    let engine = match opened {
        Err(_) => return errors.push(hung("open")),
        Ok(Err(e)) if !final_phase && acceptable(&e) => return,
        Ok(Err(e)) => return errors.push(format!("open failed: {e:?}")),
        Ok(Ok(engine)) => engine,
    };
    let begins_before: HashMap<&str, usize> = ids
        .iter()
        .map(|(id, _)| (id.as_str(), log_of(id).lock().unwrap().len()))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (id, job) in ids {
        let engine = engine.clone();
        let (id, job) = (id.clone(), job.clone());
        tasks.spawn(async move {
            let outcome = match engine.start(chain, id.clone(), job).await {
                Ok(handle) => handle.result().await,
                Err(e) => Err(e),
            };
            (id, outcome)
        });
    }
    let mut outcomes = BTreeMap::new();
    let joined = tokio::time::timeout(support::hang_guard(), async {
        while let Some(joined) = tasks.join_next().await {
            let (id, outcome) = joined.expect("instance task");
            outcomes.insert(id, outcome);
        }
    })
    .await;
    if joined.is_err() {
        errors.push(format!("{}; finished: {outcomes:?}", hung("instances")));
    }
    for (id, outcome) in &outcomes {
        match outcome {
            Ok(Ok(value)) => {
                count(if final_phase {
                    FINISHED_AFTER
                } else {
                    FINISHED_DESPITE
                });
                let last = log_of(id)
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .find_map(|e| match e {
                        Event::Ret(s, v) if *s == STEPS - 1 => Some(*v),
                        _ => None,
                    });
                if last != Some(*value) {
                    errors.push(format!(
                        "{id}: output {value}, but its last step returned {last:?}"
                    ));
                }
            }
            Ok(Err(e)) => errors.push(format!("{id}: the workflow itself failed: {e}")),
            Err(e) if !final_phase && acceptable(e) => count(ERRORS_REPORTED),
            Err(e) if final_phase => {
                errors.push(format!("{id}: not finished after the fault cleared: {e:?}"))
            }
            Err(e) if !acceptable(e) => {
                errors.push(format!("{id}: a store fault surfaced as {e:?}"))
            }
            Err(_) => {}
        }
        if let Ok(Status::Failed { reason }) = engine.status(id).await {
            errors.push(format!("{id}: marked failed for a store fault: {reason}"));
        }
    }
    // No new step once an apply has failed: at most the one body per
    // instance that may have passed the check just before.
    let failed_at = failed_at.load(Ordering::SeqCst);
    if failed_at != u64::MAX {
        for (id, _) in ids {
            let log = log_of(id);
            let log = log.lock().unwrap();
            let late = log[begins_before[id.as_str()]..]
                .iter()
                .filter(|e| matches!(e, Event::Begin(_, _, seq) if *seq > failed_at))
                .count();
            if late > 1 {
                errors.push(format!(
                    "{id}: {late} step bodies began after the store failed ({:?})",
                    plan.write
                ));
            }
        }
    }
    if tokio::time::timeout(support::hang_guard(), engine.shutdown())
        .await
        .is_err()
    {
        errors.push(hung("shutdown"));
    }
}

/// Checks every instance's events: one chain, and no step ran again after
/// it returned.
fn check_events(ids: &[(String, Job)], errors: &mut Vec<String>) {
    for (id, job) in ids {
        let log = log_of(id);
        let log = log.lock().unwrap();
        let mut returned: HashMap<u32, u64> = HashMap::new();
        let mut inputs: HashMap<u32, u64> = HashMap::new();
        for event in log.iter() {
            match *event {
                Event::Begin(step, input, _) => {
                    if let Some(v) = returned.get(&step) {
                        errors.push(format!(
                            "{id}: step {step} returned {v} and then its body ran again"
                        ));
                    }
                    if *inputs.entry(step).or_insert(input) != input {
                        errors.push(format!(
                            "{id}: step {step} began with two inputs: a returned step was lost"
                        ));
                    }
                    let expected = if step == 0 {
                        Some(job.seed)
                    } else {
                        returned.get(&(step - 1)).copied()
                    };
                    if expected.is_some_and(|e| e != input) {
                        errors.push(format!(
                            "{id}: step {step} began with {input}, expected {expected:?}"
                        ));
                    }
                }
                Event::Ret(step, value) => {
                    if *returned.entry(step).or_insert(value) != value {
                        errors.push(format!("{id}: step {step} returned two different values"));
                    }
                }
            }
        }
    }
}

/// Runs one seed; returns its violations.
async fn run_seed(name: &str, seed: u64, data: Data) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let ids: Vec<(String, Job)> = (0..INSTANCES)
        .map(|k| {
            (
                format!("{name}-{seed}-{k}"),
                Job {
                    seed: mix(seed ^ k),
                    steps: STEPS,
                },
            )
        })
        .collect();
    let mut errors = Vec::new();
    let plans = [Plan::draw(&mut rng), Plan::draw(&mut rng)];
    for plan in plans {
        phase(&data, plan, &ids, false, &mut errors).await;
    }
    phase(&data, Plan::default(), &ids, true, &mut errors).await;
    check_events(&ids, &mut errors);
    for (id, _) in &ids {
        forget(id);
    }
    if !errors.is_empty() {
        errors.insert(0, format!("seed {seed} with plans {plans:?}"));
    }
    errors
}

fn seeds(default: u64) -> (u64, u64) {
    let base = support::seed_from_env("DURABLE_FAULT_SEED");
    let count = std::env::var("DURABLE_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (base, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_fault_seeds_over_memory() {
    let (base, count) = seeds(3000);
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    for i in 0..count {
        // After a hang, no new seed: each could cost a hang guard.
        if failures.iter().any(|f: &String| f.contains(HANG)) {
            break;
        }
        let seed = base.wrapping_add(i);
        tasks.spawn(run_seed(
            "mem",
            seed,
            Data::Memory(Arc::new(Mutex::new(empty_trees()))),
        ));
        if tasks.len() >= 16
            && let Some(result) = tasks.join_next().await
        {
            failures.extend(result.expect("seed task"));
        }
    }
    while let Some(result) = tasks.join_next().await {
        failures.extend(result.expect("seed task"));
    }
    eprintln!(
        "fault injection over memory: {count} seeds from base {base} in {:.1?}; {}",
        started.elapsed(),
        stats()
    );
    assert!(
        failures.is_empty(),
        "seed base {base} (replay: DURABLE_FAULT_SEED={base}):\n{}",
        support::violations(&failures)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_seeds_over_sled() {
    let (base, count) = seeds(40);
    let count = count.min(200);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for i in 0..count {
        if failures.iter().any(|f: &String| f.contains(HANG)) {
            break;
        }
        let seed = base.wrapping_add(i) ^ 0x51ED;
        let dir = tempfile::tempdir().expect("temp dir");
        let errors = run_seed("sled", seed, Data::Sled(dir.path().join("store"))).await;
        if !errors.is_empty() {
            support::keep(dir);
            failures.extend(errors);
        }
    }
    eprintln!(
        "fault injection over sled: {count} seeds from base {base} in {:.1?}; {}",
        started.elapsed(),
        stats()
    );
    assert!(
        failures.is_empty(),
        "seed base {base} (replay: DURABLE_FAULT_SEED={base}):\n{}",
        support::violations(&failures)
    );
}

/// A store whose scans fail and whose drop takes a moment, noting when it
/// is dropped.
struct SlowToClose(Arc<AtomicBool>);

impl Drop for SlowToClose {
    fn drop(&mut self) {
        std::thread::sleep(Duration::from_millis(100));
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Store for SlowToClose {
    fn get(&self, _: Tree, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    fn scan_prefix(&self, _: Tree, _: &[u8]) -> Result<Entries, StoreError> {
        Err(StoreError::io_message("scan", "injected read error"))
    }

    fn apply(&self, _: &[Batch]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// When recovery fails, `open` stops what it started and releases the store
/// before it returns its error, so an immediate retry does not get `Locked`.
#[tokio::test]
async fn a_failed_open_releases_the_store_before_returning() {
    let dropped = Arc::new(AtomicBool::new(false));
    let err = Engine::builder()
        .store(SlowToClose(Arc::clone(&dropped)))
        .register(chain)
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Io { .. })),
        "{err:?}"
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "open() returned its error while the store was still held"
    );
}
