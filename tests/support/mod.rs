//! Shared by the integration tests: hang guards (waiting on a condition
//! instead of a clock), and for the reliability tests (torture, crash
//! points) a seeded random generator, the fsynced ledger that step bodies
//! append to outside the store, the torture workload, the worker that runs
//! it in a child process, the driver's child handling, and the checker of
//! the invariants.
//!
//! No test may depend on the machine's speed: a test waits for what it
//! needs (a status, a ledger line, a marker, a child's exit) to happen, and
//! a time limit only guards against a hang. The guard is
//! [`hang_guard`]: 10 minutes, times `DURABLE_TEST_TIMEOUT_SCALE`.
//!
//! The ledger is the truth about side effects. Every step body appends
//! `BEGIN id step input nonce` and `END id step value` (each fsynced); the
//! workflow appends `RET id step value` each time `step!` returns (replays
//! included), and the worker appends its own milestones (`GEN`, `STATUS`,
//! `STARTED`, `COMPLETE`). A step's output depends on a nonce drawn per
//! attempt, so a checkpoint lost after the next step began shows up as two
//! different inputs to that next step.
#![allow(dead_code)] // each test binary uses a part of this module

#[cfg(feature = "postgres")]
pub mod pg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use durable::prelude::*;
use durable::{Status, StepOutcome};
use serde::{Deserialize, Serialize};

/// Set in a child process: the test directory (ledger and store).
pub const CHILD_ENV: &str = "DURABLE_RELIABILITY_CHILD";
/// The child's generation number (one per child process).
const GEN_ENV: &str = "DURABLE_RELIABILITY_GEN";
/// The child's workload: `round instances steps pad`.
const WORK_ENV: &str = "DURABLE_RELIABILITY_WORK";
/// Set in a child whose file system fails an operation on purpose (an
/// injected EIO): an error then aborts the worker, a crash like a kill,
/// instead of being recorded in the ledger as a violation.
pub const ABORT_ON_ERROR_ENV: &str = "DURABLE_RELIABILITY_ABORT_ON_ERROR";

// --------------------------------------------------------------- hang guards

/// Multiplies every hang guard: e.g. `0.05` to see a hang within 30 s, `3`
/// on an emulator.
pub const TIMEOUT_SCALE_ENV: &str = "DURABLE_TEST_TIMEOUT_SCALE";

/// How long a test waits for something that must happen before it calls it
/// a hang. Not a speed limit: what a test waits for takes milliseconds to
/// seconds, also on a machine busy with other work.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// `base` times `DURABLE_TEST_TIMEOUT_SCALE` (1 when unset).
pub fn scaled(base: Duration) -> Duration {
    match std::env::var(TIMEOUT_SCALE_ENV) {
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(scale) if scale.is_finite() && scale > 0.0 => base.mul_f64(scale),
            _ => panic!("{TIMEOUT_SCALE_ENV}={s:?} is not a positive number"),
        },
        Err(_) => base,
    }
}

/// The hang guard: 10 minutes, scaled by `DURABLE_TEST_TIMEOUT_SCALE`.
pub fn hang_guard() -> Duration {
    scaled(HANG_GUARD)
}

/// The panic message of a hang guard that ran out.
fn hung(what: &str, waited: Duration, observed: &dyn Debug) -> String {
    format!(
        "hang guard: {what} did not happen within {waited:.1?} (a hang, not a slow machine: \
         the guard is 10 minutes times {TIMEOUT_SCALE_ENV}); last observed: {observed:?}"
    )
}

/// The pause between two polls: short at first, up to 20 ms.
fn poll_pause(polls: u32) -> Duration {
    Duration::from_millis(1 << polls.min(4)).min(Duration::from_millis(20))
}

/// Polls `probe` until it returns `Ok`, and returns that value. `Err`
/// carries what was observed instead; if the hang guard runs out first,
/// panics with the last observation.
pub async fn wait_until<T, O: Debug>(
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, O>,
) -> T {
    let guard = hang_guard();
    let start = Instant::now();
    let mut polls = 0;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(observed) if start.elapsed() >= guard => panic!("{}", hung(what, guard, &observed)),
            Err(_) => {}
        }
        tokio::time::sleep(poll_pause(polls)).await;
        polls += 1;
    }
}

/// [`wait_until`] for a test without an async runtime: the same, with
/// `std::thread::sleep` between polls.
pub fn wait_until_blocking<T, O: Debug>(what: &str, mut probe: impl FnMut() -> Result<T, O>) -> T {
    let guard = hang_guard();
    let start = Instant::now();
    let mut polls = 0;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(observed) if start.elapsed() >= guard => panic!("{}", hung(what, guard, &observed)),
            Err(_) => {}
        }
        std::thread::sleep(poll_pause(polls));
        polls += 1;
    }
}

/// Awaits `future` under the hang guard; panics if it runs out.
pub async fn guarded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    let guard = hang_guard();
    match tokio::time::timeout(guard, future).await {
        Ok(output) => output,
        Err(_) => panic!("{}", hung(what, guard, &"still pending")),
    }
}

/// Waits for child process `child` to exit, under `guard`; if it runs out,
/// kills the child and returns the hang as an error.
/// This test binary run again for test `test` alone (its output shown,
/// stdout dropped): the process a crash test kills. Add its environment
/// with `.env(..)`, then `.spawn()`.
pub fn test_process(test: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args(["--exact", test, "--nocapture"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

pub fn wait_child(child: &mut Child, what: &str, guard: Duration) -> Result<ExitStatus, String> {
    let start = Instant::now();
    let mut polls = 0;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if start.elapsed() >= guard {
            let _ = child.kill();
            let _ = child.wait();
            return Err(hung(what, guard, &"the child was still running; killed it"));
        }
        std::thread::sleep(poll_pause(polls));
        polls += 1;
    }
}

// ---------------------------------------------------------------- randomness

/// splitmix64's finalizer: a good 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small seeded generator (splitmix64): the same seed, the same choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed ^ 0x5EED))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    /// Uniform in `0..=max`.
    pub fn duration(&mut self, max: Duration) -> Duration {
        Duration::from_nanos(self.below(max.as_nanos() as u64 + 1))
    }
}

/// The seed in environment variable `var`, or a fresh one from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a u64")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            mix(nanos ^ u64::from(std::process::id()))
        }
    }
}

// -------------------------------------------------------------------- ledger

static LEDGER: Mutex<Option<File>> = Mutex::new(None);

pub fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("ledger.txt")
}

pub fn store_path(dir: &Path) -> PathBuf {
    dir.join("store")
}

/// Ends every complete ledger line. A kill can tear a line whose write
/// straddles a page boundary of the file (the kernel stops between pages);
/// a line without this end is such a torn one.
const END: &str = " $";

/// Opens the ledger of test directory `dir` for appending, ending a line a
/// killed predecessor tore.
pub fn open_ledger(dir: &Path) {
    let path = ledger_path(dir);
    let torn = std::fs::read(&path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the ledger");
    if torn {
        file.write_all(b"\n").expect("end a torn line");
    }
    *LEDGER.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
}

fn append(line: &str, sync: bool) {
    let mut guard = LEDGER.lock().unwrap_or_else(|e| e.into_inner());
    let file = guard.as_mut().expect("the ledger is not open");
    let mut buf = Vec::with_capacity(line.len() + END.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.extend_from_slice(END.as_bytes());
    buf.push(b'\n');
    // One write(2) per line, so concurrent appenders never interleave.
    file.write_all(&buf).expect("append to the ledger");
    if sync {
        file.sync_data().expect("fsync the ledger");
    }
}

/// Appends a line: a milestone (a kill keeps what `write` returned).
pub fn ledger(line: impl AsRef<str>) {
    append(line.as_ref(), false);
}

/// Appends a line and fsyncs it: a side effect of a step body.
pub fn ledger_synced(line: impl AsRef<str>) {
    append(line.as_ref(), true);
}

/// Appends one fsynced line to the ledger of test directory `dir`,
/// opening it for this line alone (for step bodies that take the directory
/// as input rather than a ledger opened by [`open_ledger`]). The line
/// starts on a line of its own, so a line a kill tore before it stays torn
/// and is left out.
pub fn ledger_in(dir: impl AsRef<Path>, line: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger_path(dir.as_ref()))
        .expect("open the ledger");
    file.write_all(format!("\n{line}{END}\n").as_bytes())
        .expect("append to the ledger");
    file.sync_data().expect("fsync the ledger");
}

/// Every ledger line: `Ok` with the end marker removed, or `Err` with a
/// line a kill tore.
pub fn read_ledger_raw(dir: &Path) -> Vec<Result<String, String>> {
    std::fs::read_to_string(ledger_path(dir))
        .unwrap_or_default()
        .lines()
        .map(|l| match l.strip_suffix(END) {
            Some(line) => Ok(line.to_string()),
            None => Err(l.to_string()),
        })
        .collect()
}

/// The complete ledger lines, end markers removed.
pub fn read_ledger(dir: &Path) -> Vec<String> {
    read_ledger_raw(dir).into_iter().flatten().collect()
}

/// Waits until the ledger of `dir` holds `lines` lines (a step body in
/// flight has recorded itself).
pub async fn wait_for_ledger(dir: &Path, lines: usize) {
    wait_until("the ledger's lines", async || {
        let ledger = read_ledger(dir);
        if ledger.len() == lines {
            Ok(())
        } else {
            Err(ledger)
        }
    })
    .await;
}

/// Awaits `result` (an instance's outcome) under the hang guard and
/// asserts that the instance ended cancelled.
pub async fn assert_cancelled<T: Debug>(
    result: impl std::future::Future<Output = durable::Result<T>>,
) {
    let err = guarded("the instance ends", result).await.unwrap_err();
    assert!(
        matches!(
            err,
            durable::Error::Instance(durable::InstanceError::Cancelled { .. })
        ),
        "{err:?}"
    );
}

/// Asserts that `history` holds a cancel request, then the compensation of
/// `count` steps, then the cancelled end, in that order.
pub fn assert_compensated_then_cancelled(history: &durable::History, count: u32) {
    use durable::TransitionKind;
    let kinds: Vec<&TransitionKind> = history.transitions.iter().map(|t| &t.kind).collect();
    let at = |want: &dyn Fn(&TransitionKind) -> bool| kinds.iter().position(|k| want(k));
    let requested = at(&|k| matches!(k, TransitionKind::CancelRequested { .. }));
    let compensated = at(&|k| *k == TransitionKind::Compensated { count });
    let cancelled = at(&|k| matches!(k, TransitionKind::Cancelled));
    assert!(
        requested.is_some() && requested < compensated && compensated < cancelled,
        "{kinds:?}"
    );
}

// ------------------------------------------------------------------ workload

/// One torture instance: its id is `r{round}-i{index}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub round: u32,
    pub index: u32,
    pub steps: u32,
    /// Largest padding of a step's output in bytes (0: none). Padding over
    /// ~128 KiB goes to sled's blob files.
    pub pad: u32,
}

impl Job {
    pub fn id(&self) -> String {
        format!("r{}-i{}", self.round, self.index)
    }

    /// The input of step 0.
    pub fn seed(&self) -> u64 {
        mix((u64::from(self.round) << 32) | u64::from(self.index))
    }
}

/// The shape of one round: `instances` jobs of `steps` steps; job 0 pads
/// its outputs up to `pad` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub instances: u32,
    pub steps: u32,
    pub pad: u32,
}

impl Workload {
    pub fn jobs(&self, round: u32) -> Vec<Job> {
        (0..self.instances)
            .map(|index| Job {
                round,
                index,
                steps: self.steps,
                pad: if index == 0 { self.pad } else { 0 },
            })
            .collect()
    }

    fn env(&self, round: u32) -> String {
        format!("{round} {} {} {}", self.instances, self.steps, self.pad)
    }

    fn from_env(s: &str) -> (u32, Workload) {
        let v: Vec<u32> = s.split(' ').map(|p| p.parse().expect("workload")).collect();
        (
            v[0],
            Workload {
                instances: v[1],
                steps: v[2],
                pad: v[3],
            },
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOut {
    pub value: u64,
    pub pad: Vec<u8>,
}

/// The padding a step with output `value` returns: derived from the value,
/// so a replay that returns other bytes is caught. One output in four gets
/// `max` bytes or a little less (over sled's ~128 KiB blob threshold when
/// `max` is), the others under 1 KiB.
pub fn padding(value: u64, max: u32) -> Vec<u8> {
    if max == 0 {
        return Vec::new();
    }
    let max = u64::from(max);
    let len = if mix(value).is_multiple_of(4) {
        max - mix(value ^ 1) % (max / 16 + 1)
    } else {
        mix(value ^ 2) % 1024
    };
    vec![(value & 0xFF) as u8; len as usize]
}

/// Set by the first step body of this process.
static RUNNING: AtomicBool = AtomicBool::new(false);

static NONCE: AtomicU64 = AtomicU64::new(0);

fn generation_from_env() -> u64 {
    std::env::var(GEN_ENV)
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// A step body: its output depends on its input and on a nonce unique to
/// this attempt; it stays in flight for up to 3 ms.
async fn body(id: &str, step: u32, input: u64, pad: u32) -> Result<StepOut, String> {
    let nonce = (generation_from_env() << 32) | NONCE.fetch_add(1, Ordering::Relaxed);
    ledger_synced(format!("BEGIN {id} {step} {input} {nonce}"));
    if !RUNNING.swap(true, Ordering::Relaxed) {
        marker("RUNNING");
    }
    tokio::time::sleep(Duration::from_micros(mix(nonce) % 3000)).await;
    let value = mix(input ^ mix(nonce));
    ledger_synced(format!("END {id} {step} {value}"));
    Ok(StepOut {
        value,
        pad: padding(value, pad),
    })
}

/// The torture workflow: a chain of `job.steps` occurrences of one step,
/// each fed the previous output.
#[durable]
pub async fn torture(ctx: &Ctx, job: Job) -> Result<u64, String> {
    let mut value = job.seed();
    for step in 0..job.steps {
        let out = step!("step", body(ctx.id(), step, value, job.pad).await)?;
        if out.pad != padding(out.value, job.pad) {
            ledger(format!("BADPAD {} {step}", ctx.id()));
        }
        ledger(format!("RET {} {step} {}", ctx.id(), out.value));
        value = out.value;
    }
    Ok(value)
}

/// Peak resident set size of this process, in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Tells the driver (through stdout) that the worker reached `what`.
fn marker(what: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@{what}");
    let _ = out.flush();
}

fn status_word(status: &durable::Result<Status>) -> &'static str {
    match status {
        Ok(Status::Running { .. }) => "Running",
        Ok(Status::Completed { .. }) => "Completed",
        Ok(Status::Blocked { .. }) => "Blocked",
        Ok(Status::Failed { .. }) => "Failed",
        Ok(Status::NeedsAttention { .. }) => "NeedsAttention",
        Ok(_) => "Other",
        Err(Error::Usage(UsageError::NotFound { .. })) => "NotFound",
        Err(_) => "Error",
    }
}

/// The worker, run in a child process: opens the store (resuming what is
/// unfinished), starts (or attaches to) every instance of its round, waits
/// for all of them and records each milestone in the ledger. Returns at once
/// outside a child.
pub async fn worker() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let (round, workload) = Workload::from_env(&std::env::var(WORK_ENV).expect("workload"));
    let gen_no = generation_from_env();
    open_ledger(&dir);
    ledger(format!("GEN {gen_no} OPENING"));
    marker("OPENING");
    let t0 = Instant::now();
    let opened = Engine::builder()
        .path(store_path(&dir))
        .register(torture)
        // Kills during recovery are the point here, not a crash loop.
        .max_recoveries(u32::MAX)
        .open()
        .await;
    let engine = match opened {
        Ok(engine) => engine,
        Err(e) => fail(
            format!("GEN {gen_no} OPEN-ERROR {e}"),
            format!("generation {gen_no}: the store did not open: {e}"),
        ),
    };
    if std::env::var_os("DURABLE_RELIABILITY_VERBOSE").is_some() {
        eprintln!("worker: opened in {:?}", t0.elapsed());
    }
    let report = engine.recovery();
    ledger(format!(
        "GEN {gen_no} OPENED {} {}",
        report.resumed,
        report.skipped.len()
    ));
    marker("OPENED");
    let jobs = workload.jobs(round);
    for job in &jobs {
        let status = engine.status(&job.id()).await;
        ledger(format!("STATUS {} {}", job.id(), status_word(&status)));
    }
    let mut handles = Vec::new();
    for job in jobs {
        let id = job.id();
        let handle = engine
            .start(torture, id.clone(), job)
            .await
            .unwrap_or_else(|e| fail(format!("ERROR {id} start: {e}"), format!("start {id}: {e}")));
        ledger(format!("STARTED {id}"));
        handles.push((id, handle));
    }
    for (id, handle) in handles {
        match handle.result().await {
            Ok(Ok(value)) => ledger(format!("COMPLETE {id} {value}")),
            other => fail(
                format!("ERROR {id} {other:?}"),
                format!("instance {id} did not complete: {other:?}"),
            ),
        }
    }
    ledger(format!("GEN {gen_no} DONE {}", peak_rss_kib()));
    if std::env::var_os("DURABLE_RELIABILITY_VERBOSE").is_some() {
        eprintln!("worker: done in {:?}", t0.elapsed());
    }
    engine.shutdown().await;
}

/// Ends the worker on an error: records `line` in the ledger and panics
/// with `message`, or aborts at once when the driver injects I/O errors
/// (see [`ABORT_ON_ERROR_ENV`]).
fn fail(line: String, message: String) -> ! {
    if std::env::var_os(ABORT_ON_ERROR_ENV).is_some() {
        std::process::abort();
    }
    ledger(line);
    panic!("{message}");
}

// -------------------------------------------------------------------- driver

/// A running child: the process and the markers it printed, with the time
/// each was read.
pub struct Worker {
    pub child: Child,
    markers: Receiver<(String, Instant)>,
    /// Markers read so far, with the time each was read.
    seen: HashMap<String, Instant>,
    pub spawned: Instant,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Exited 0 by itself.
    Clean,
    /// Killed by a signal (our SIGKILL, or its own abort at a crash point).
    Killed,
}

impl Worker {
    /// Starts generation `gen_no` of the worker: this test binary re-run with
    /// only test `child_test`, working on `round` of `workload` in `dir`.
    pub fn spawn(
        child_test: &str,
        dir: &Path,
        gen_no: u64,
        round: u32,
        workload: Workload,
        extra_env: &[(&str, String)],
    ) -> Worker {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.args(["--exact", child_test, "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, dir)
            .env(GEN_ENV, gen_no.to_string())
            .env(WORK_ENV, workload.env(round))
            .env_remove("DURABLE_CRASH_POINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if std::env::var_os("DURABLE_RELIABILITY_VERBOSE").is_some() {
            cmd.stderr(Stdio::inherit());
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the worker");
        let spawned = Instant::now();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, markers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have printed "test name ... " on the same line.
                if let Some((_, m)) = line.split_once("@@")
                    && tx.send((m.to_string(), Instant::now())).is_err()
                {
                    break;
                }
            }
        });
        Worker {
            child,
            markers,
            seen: HashMap::new(),
            spawned,
        }
    }

    /// Waits for marker `what`: `Ok(Some(at))` once the child printed it,
    /// `Ok(None)` if it exited without printing it, `Err` if the hang guard
    /// ran out first (the child is then killed).
    pub fn wait_marker(&mut self, what: &str) -> Result<Option<Instant>, String> {
        let guard = hang_guard();
        let deadline = Instant::now() + guard;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.markers.recv_timeout(left) {
                Ok((m, at)) => {
                    let found = m == what;
                    self.seen.insert(m, at);
                    if found {
                        return Ok(Some(at));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(hung(
                        &format!("the worker's marker {what}"),
                        guard,
                        &self.seen.keys().collect::<Vec<_>>(),
                    ));
                }
            }
        }
    }

    /// Every marker the child printed, with the time each was read; call
    /// once the child has exited (its stdout is then closed, and the reader
    /// stops after the last line).
    pub fn markers(&mut self) -> HashMap<String, Instant> {
        while let Ok((m, at)) = self.markers.recv_timeout(hang_guard()) {
            self.seen.insert(m, at);
        }
        std::mem::take(&mut self.seen)
    }

    /// Sleeps until `at` (checking often whether the child exited), then
    /// SIGKILLs it if it is still running. Returns how it ended.
    pub fn kill_at(&mut self, at: Instant) -> Result<Ended, String> {
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return classify(status);
            }
            let now = Instant::now();
            if now >= at {
                break;
            }
            std::thread::sleep((at - now).min(Duration::from_micros(200)));
        }
        let _ = self.child.kill();
        let status = self.child.wait().map_err(|e| e.to_string())?;
        classify(status)
    }

    /// Waits for the child to exit by itself; if the hang guard runs out,
    /// kills it and reports the hang.
    pub fn wait(&mut self) -> Result<Ended, String> {
        classify(wait_child(
            &mut self.child,
            "the worker's exit",
            hang_guard(),
        )?)
    }
}

fn classify(status: ExitStatus) -> Result<Ended, String> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        Ok(Ended::Clean)
    } else if status.signal().is_some() {
        Ok(Ended::Killed)
    } else {
        Err(format!("the worker failed: {status}"))
    }
}

/// Bytes a directory tree occupies on disk (allocated blocks).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

/// Keeps `dir` after a failure and says where it is.
pub fn keep(dir: tempfile::TempDir) -> PathBuf {
    let path = dir.keep();
    eprintln!(
        "kept the test directory (store and ledger) at {}",
        path.display()
    );
    path
}

// ------------------------------------------------------------------- checker

/// What the checker counted.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Generations (child processes) seen in the ledger.
    pub gens: usize,
    /// Generations that ended by a kill or abort.
    pub kills: usize,
    /// Kills whose generation had written nothing yet (process start-up).
    pub kills_at_startup: usize,
    /// Kills while the store was opening (after `OPENING`, before `OPENED`).
    pub kills_in_open: usize,
    /// Kills after `OPENED` but before the generation began or returned any
    /// step (recovery: resuming instances, recording their resumes).
    pub kills_in_recovery: usize,
    /// Kills while steps ran.
    pub kills_in_run: usize,
    /// Instances checked.
    pub instances: usize,
    /// Step bodies begun, in total.
    pub bodies: usize,
    /// Bodies begun again for a step that had begun before.
    pub reruns: usize,
    /// Sum over kills of the instances with a step in flight at that kill.
    pub in_flight_at_kills: usize,
    /// Largest peak RSS of a worker that finished, in KiB.
    pub max_rss_kib: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} generations, {} kills (start-up {}, open {}, recovery {}, steps {}); \
             {} instances, {} step bodies, {} re-runs ({:.3} per kill, bound {}); peak worker RSS {} KiB",
            self.gens,
            self.kills,
            self.kills_at_startup,
            self.kills_in_open,
            self.kills_in_recovery,
            self.kills_in_run,
            self.instances,
            self.bodies,
            self.reruns,
            self.reruns as f64 / self.kills.max(1) as f64,
            self.in_flight_at_kills,
            self.max_rss_kib,
        )
    }
}

#[derive(Debug, Default)]
struct StepLog {
    /// (line, gen_no, input)
    begins: Vec<(usize, u64, u64)>,
    /// (line, gen_no, value)
    ends: Vec<(usize, u64, u64)>,
    /// (line, gen_no, value)
    rets: Vec<(usize, u64, u64)>,
}

#[derive(Debug, Default)]
struct InstanceLog {
    steps: BTreeMap<u32, StepLog>,
    /// (gen_no, status word)
    statuses: Vec<(u64, String)>,
    started: Vec<u64>,
    /// (line, gen_no, value)
    completes: Vec<(usize, u64, u64)>,
}

#[derive(Debug, Default)]
struct GenLog {
    lines: usize,
    opened: bool,
    done: bool,
    rss_kib: u64,
    bodies: usize,
}

/// Checks the ledger of test directory `dir` against every invariant, given
/// how each generation ended (`ended[gen_no]`, as the driver saw it) and the
/// jobs that were run. Returns the counts, or every violation found.
pub fn check_ledger(
    dir: &Path,
    ended: &BTreeMap<u64, Ended>,
    jobs: &[Job],
) -> Result<Summary, Vec<String>> {
    let raw = read_ledger_raw(dir);
    let mut errors = Vec::new();
    let mut instances: HashMap<String, InstanceLog> = HashMap::new();
    let mut gens: BTreeMap<u64, GenLog> = BTreeMap::new();
    let mut gen_no = 0u64;
    for (pos, line) in raw.iter().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(torn) => {
                // Only a kill tears a line, and it is its generation's last.
                let last = raw
                    .get(pos + 1)
                    .is_none_or(|next| next.as_ref().is_ok_and(|n| n.ends_with(" OPENING")));
                if !last || ended.get(&gen_no) != Some(&Ended::Killed) {
                    errors.push(format!(
                        "ledger line {pos} is torn but its generation {gen_no} went on: {torn:?}"
                    ));
                }
                continue;
            }
        };
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        let bad = || format!("ledger line {pos} is malformed: {line:?}");
        match f[0] {
            "GEN" => {
                let Some(g) = num(1) else {
                    errors.push(bad());
                    continue;
                };
                match f.get(2).copied() {
                    Some("OPENING") => gen_no = g,
                    Some("OPENED") => gens.entry(g).or_default().opened = true,
                    Some("DONE") => {
                        let log = gens.entry(g).or_default();
                        log.done = true;
                        log.rss_kib = num(3).unwrap_or(0);
                    }
                    Some("OPEN-ERROR") => errors.push(format!(
                        "the store failed to open in generation {g}: {line}"
                    )),
                    _ => errors.push(bad()),
                }
                if g != gen_no {
                    errors.push(format!(
                        "ledger line {pos} of generation {g} inside generation {gen_no}"
                    ));
                }
                gens.entry(g).or_default().lines += 1;
            }
            "BEGIN" | "END" | "RET" => {
                let (Some(id), Some(step), Some(v)) = (f.get(1), num(2), num(3)) else {
                    errors.push(bad());
                    continue;
                };
                let log = instances
                    .entry(id.to_string())
                    .or_default()
                    .steps
                    .entry(step as u32)
                    .or_default();
                match f[0] {
                    "BEGIN" => {
                        log.begins.push((pos, gen_no, v));
                        gens.entry(gen_no).or_default().bodies += 1;
                    }
                    "END" => log.ends.push((pos, gen_no, v)),
                    _ => log.rets.push((pos, gen_no, v)),
                }
                gens.entry(gen_no).or_default().lines += 1;
            }
            "STATUS" | "STARTED" | "COMPLETE" => {
                let Some(id) = f.get(1) else {
                    errors.push(bad());
                    continue;
                };
                let log = instances.entry(id.to_string()).or_default();
                match f[0] {
                    "STATUS" => log
                        .statuses
                        .push((gen_no, f.get(2).copied().unwrap_or("").to_string())),
                    "STARTED" => log.started.push(gen_no),
                    _ => match num(2) {
                        Some(v) => log.completes.push((pos, gen_no, v)),
                        None => errors.push(bad()),
                    },
                }
                gens.entry(gen_no).or_default().lines += 1;
            }
            "BADPAD" => errors.push(format!(
                "a step returned padding that is not its own: {line}"
            )),
            "ERROR" => errors.push(format!("an instance ended in error: {line}")),
            _ => errors.push(bad()),
        }
    }

    let mut summary = Summary::default();
    for (&g, how) in ended {
        summary.gens += 1;
        let log = gens.get(&g);
        match how {
            Ended::Clean => {
                if !log.is_some_and(|l| l.done) {
                    errors.push(format!(
                        "generation {g} exited cleanly without finishing its round"
                    ));
                }
                summary.max_rss_kib = summary.max_rss_kib.max(log.map_or(0, |l| l.rss_kib));
            }
            Ended::Killed => {
                summary.kills += 1;
                match log {
                    None => summary.kills_at_startup += 1,
                    Some(l) if !l.opened => summary.kills_in_open += 1,
                    Some(l) if l.bodies == 0 => summary.kills_in_recovery += 1,
                    Some(_) => summary.kills_in_run += 1,
                }
            }
        }
    }

    for job in jobs {
        let id = job.id();
        summary.instances += 1;
        let Some(inst) = instances.get(&id) else {
            errors.push(format!("{id}: never ran"));
            continue;
        };
        // No instance lost: once started, every later generation finds it.
        if let Some(&first) = inst.started.iter().min() {
            for (g, word) in &inst.statuses {
                if *g > first && word == "NotFound" {
                    errors.push(format!(
                        "{id}: started in generation {first} but not found in generation {g} (instance lost)"
                    ));
                }
            }
        }
        // Recovery never goes back in time: a completed instance stays completed.
        let mut completed_in = None;
        for (g, word) in &inst.statuses {
            if word == "Completed" {
                completed_in.get_or_insert(*g);
            } else if completed_in.is_some_and(|c| c < *g) {
                errors.push(format!(
                    "{id}: completed in generation {} but {word} in generation {g}",
                    completed_in.unwrap_or(0)
                ));
            }
            if matches!(word.as_str(), "Failed" | "NeedsAttention" | "Error") {
                errors.push(format!("{id}: status {word} in generation {g}"));
            }
        }

        let mut expected_input = job.seed();
        for step in 0..job.steps {
            let Some(log) = inst.steps.get(&step) else {
                errors.push(format!("{id}: step {step} never ran"));
                break;
            };
            summary.bodies += log.begins.len();
            summary.reruns += log.begins.len().saturating_sub(1);
            // One chain: every attempt of a step got the same input, the
            // value the previous step returned.
            let inputs: BTreeSet<u64> = log.begins.iter().map(|b| b.2).collect();
            if inputs.len() > 1 {
                errors.push(format!(
                    "{id}: step {step} began with {} different inputs {inputs:?}: a checkpoint of step {} was lost",
                    inputs.len(),
                    step.wrapping_sub(1)
                ));
            }
            if let Some(&(pos, _, input)) = log.begins.iter().find(|b| b.2 != expected_input) {
                errors.push(format!(
                    "{id}: step {step} began (line {pos}) with input {input}, expected {expected_input}"
                ));
            }
            // Returned values agree and were produced by a body.
            let rets: BTreeSet<u64> = log.rets.iter().map(|r| r.2).collect();
            if rets.len() > 1 {
                errors.push(format!(
                    "{id}: step {step} returned different values {rets:?}"
                ));
            }
            let Some(&(first_ret, _, value)) = log.rets.first() else {
                errors.push(format!("{id}: step {step} never returned"));
                break;
            };
            if !log.ends.iter().any(|e| e.2 == value) {
                errors.push(format!(
                    "{id}: step {step} returned {value}, which no attempt of its body produced"
                ));
            }
            // A step that returned never runs again.
            if let Some(&(pos, g, _)) = log.begins.iter().find(|b| b.0 > first_ret) {
                errors.push(format!(
                    "{id}: step {step} returned at line {first_ret} but its body began again at line {pos} (generation {g})"
                ));
            }
            // A step re-runs only if it was in flight when its generation died.
            let mut per_gen: BTreeMap<u64, usize> = BTreeMap::new();
            for b in &log.begins {
                *per_gen.entry(b.1).or_default() += 1;
            }
            for (g, n) in &per_gen {
                if *n > 1 {
                    errors.push(format!(
                        "{id}: step {step} began {n} times in generation {g}"
                    ));
                }
            }
            for &(pos, g, _) in &log.begins[..log.begins.len().saturating_sub(1)] {
                if ended.get(&g) != Some(&Ended::Killed) {
                    errors.push(format!(
                        "{id}: step {step} began at line {pos} in generation {g}, which was not killed, and ran again later"
                    ));
                }
                if log.rets.iter().any(|r| r.1 == g) {
                    errors.push(format!(
                        "{id}: step {step} returned in generation {g} and still ran again later"
                    ));
                }
            }
            expected_input = value;
        }
        // The output is the end of the chain, and it never changes.
        let outputs: BTreeSet<u64> = inst.completes.iter().map(|c| c.2).collect();
        match (outputs.len(), inst.completes.first()) {
            (0, _) => errors.push(format!("{id}: never completed")),
            (1, Some(&(pos, g, output))) => {
                if output != expected_input {
                    errors.push(format!(
                        "{id}: completed with {output}, but its chain of steps ends in {expected_input}"
                    ));
                }
                for log in inst.steps.values() {
                    if let Some(b) = log.begins.iter().find(|b| b.0 > pos) {
                        errors.push(format!(
                            "{id}: completed in generation {g} (line {pos}) but a step began at line {}",
                            b.0
                        ));
                    }
                }
            }
            _ => errors.push(format!(
                "{id}: completed with different outputs {outputs:?}"
            )),
        }
    }

    // Re-runs are bounded by the kills: each kill can cost at most the
    // steps that were in flight in it, at most one per instance.
    for (&g, how) in ended {
        if *how != Ended::Killed {
            continue;
        }
        for inst in instances.values() {
            let in_flight = inst.steps.values().any(|log| {
                log.begins.iter().any(|b| b.1 == g) && !log.rets.iter().any(|r| r.1 == g)
            });
            summary.in_flight_at_kills += usize::from(in_flight);
        }
    }
    if summary.reruns > summary.in_flight_at_kills {
        errors.push(format!(
            "{} re-runs, more than the {} steps in flight at the kills",
            summary.reruns, summary.in_flight_at_kills
        ));
    }
    if errors.is_empty() {
        Ok(summary)
    } else {
        Err(errors)
    }
}

/// Opens the store in `dir` in this process and checks every job's final
/// state: completed, with the output the ledger shows, and a history with
/// each step occurrence exactly once.
pub async fn check_store(dir: &Path, jobs: &[Job]) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let engine = match Engine::builder()
        .path(store_path(dir))
        .register(torture)
        .open()
        .await
    {
        Ok(engine) => engine,
        Err(e) => return Err(vec![format!("the final open failed: {e}")]),
    };
    if engine.recovery().resumed != 0 || !engine.recovery().skipped.is_empty() {
        errors.push(format!(
            "unfinished instances left at the end: {:?}",
            engine.recovery()
        ));
    }
    let completes: HashMap<String, u64> = read_ledger(dir)
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0] == "COMPLETE").then(|| (f[1].to_string(), f[2].parse().unwrap_or(0)))
        })
        .collect();
    for job in jobs {
        let id = job.id();
        match engine.status(&id).await {
            Ok(Status::Completed { .. }) => {}
            other => errors.push(format!("{id}: final status {other:?}")),
        }
        match engine.run(torture, id.clone(), job.clone()).await {
            Ok(Ok(output)) if completes.get(&id) == Some(&output) => {}
            other => errors.push(format!(
                "{id}: stored output {other:?}, the ledger says {:?}",
                completes.get(&id)
            )),
        }
        match engine.history(&id).await {
            Ok(history) => {
                let seen: Vec<(String, u32)> = history
                    .steps
                    .iter()
                    .map(|s| (s.name.clone(), s.occurrence))
                    .collect();
                let want: Vec<(String, u32)> =
                    (0..job.steps).map(|s| ("step".to_string(), s)).collect();
                if seen != want {
                    errors.push(format!("{id}: history steps {seen:?}, expected {want:?}"));
                }
                if let Some(s) = history
                    .steps
                    .iter()
                    .find(|s| !matches!(s.outcome, StepOutcome::Value { .. }))
                {
                    errors.push(format!("{id}: step outcome {:?}", s.outcome));
                }
            }
            Err(e) => errors.push(format!("{id}: history: {e}")),
        }
    }
    engine.shutdown().await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Formats the first violations for a panic message.
pub fn violations(errors: &[String]) -> String {
    let mut out = format!("{} violation(s):\n", errors.len());
    for e in errors.iter().take(30) {
        out.push_str("  ");
        out.push_str(e);
        out.push('\n');
    }
    out
}

// ------------------------------------------------------------ store files

/// Every file under `dir`, by path relative to it, with its bytes: a
/// snapshot of a store to compare byte for byte.
pub fn store_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Copies the store (or any directory tree) at `from` to `to`.
pub fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_store(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
