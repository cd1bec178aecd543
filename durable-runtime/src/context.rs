//! [`Ctx`]: what a running instance knows about itself.

pub(crate) use crate::inspect::InFlight;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::error::Error;
use crate::future::BoxFuture;
use crate::ids::{instance_idempotency_key, step_idempotency_key};
use crate::records::{At, CheckpointRecord, CheckpointState, WaitCond};
use crate::retry::RetryPolicy;
use crate::services::Services;

tokio::task_local! {
    /// Set while a step body runs: the step's idempotency key and its
    /// "permanent failure" flag.
    static STEP_SCOPE: Arc<StepScope>;
}

/// What a step body can see of its own step.
pub(crate) struct StepScope {
    pub key: String,
    pub permanent: AtomicBool,
}

impl StepScope {
    /// Runs `fut` with `scope` visible to [`Ctx::idempotency_key`] and [`permanent`].
    pub(crate) async fn enter<F: std::future::Future>(scope: Arc<StepScope>, fut: F) -> F::Output {
        STEP_SCOPE.scope(scope, fut).await
    }

    /// Whether the current task is running a step's body.
    pub(crate) fn inside() -> bool {
        STEP_SCOPE.try_with(|_| ()).is_ok()
    }
}

/// Marks a step error as permanent: the step is not retried, and the error
/// becomes the step's checkpointed outcome at once.
///
/// Call it inside the step's body; it returns the error unchanged, so it fits
/// in `map_err`. Outside a step body it does nothing.
///
/// ```
/// use durable_runtime::permanent;
/// async fn charge(card: &str) -> Result<u64, String> {
///     if card.is_empty() {
///         return Err(permanent("no card on file".to_string()));
///     }
///     Ok(42)
/// }
/// ```
pub fn permanent<E>(error: E) -> E {
    let _ = STEP_SCOPE.try_with(|scope| scope.permanent.store(true, Ordering::Relaxed));
    error
}

/// What the engine and a running instance share besides the store: what it
/// waits for, whether it was cancelled, and a bell rung when either changes.
#[derive(Debug)]
pub(crate) struct Signals {
    /// The waits (sleeps, `wait_for!`s) the instance is blocked in now.
    pub waiting: Mutex<Vec<WaitCond>>,
    /// Set by `Engine::cancel`: no new step starts.
    pub cancelled: AtomicBool,
    /// Set by a cancel that lets this process's run compensate where it
    /// stands (its lease kept: the step it runs is checkpointed, then
    /// compensated with the others; see `engine/saga.rs`).
    pub cancel_here: AtomicBool,
    /// Bumped when an event arrives or the instance is cancelled.
    pub bell: watch::Sender<u64>,
    /// Whether the instance is paused (`Engine::pause`): no new step
    /// starts until it is unpaused (the bell rings then).
    pub paused: AtomicBool,
    /// Steps and checkpoint writes in progress: while any is, the instance
    /// is not parked.
    pub busy: AtomicU32,
    /// Step attempts running now, for status and history.
    pub in_flight: Mutex<Vec<InFlight>>,
    /// Deadlines of retry backoffs being waited out now (each inside a
    /// step, so each also counts in `busy`).
    pub backoffs: Mutex<Vec<u64>>,
}

impl Signals {
    pub(crate) fn new() -> Signals {
        Signals {
            waiting: Mutex::new(Vec::new()),
            cancelled: AtomicBool::new(false),
            cancel_here: AtomicBool::new(false),
            bell: watch::Sender::new(0),
            paused: AtomicBool::new(false),
            busy: AtomicU32::new(0),
            in_flight: Mutex::new(Vec::new()),
            backoffs: Mutex::new(Vec::new()),
        }
    }

    /// Shows a retry backoff until `deadline_ms` as waited out until the
    /// guard drops.
    pub(crate) fn backoff(self: &Arc<Self>, deadline_ms: u64) -> BackoffGuard {
        let mut backoffs = self.backoffs.lock().unwrap_or_else(|e| e.into_inner());
        backoffs.push(deadline_ms);
        BackoffGuard {
            signals: Arc::clone(self),
            deadline_ms,
        }
    }

    /// Whether the instance can make no progress until its clock passes a
    /// deadline, an event arrives or it is unpaused (paused between steps),
    /// else: no step body or write runs (the only
    /// busy steps are waiting out a backoff), it waits for something, and
    /// nothing it waits for is due by `now_ms` or `arrived` already.
    #[cfg(feature = "testing")]
    pub(crate) fn blocked(&self, now_ms: u64, arrived: impl Fn(&WaitCond) -> bool) -> bool {
        let backoffs = self.backoffs.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let busy = self.busy.load(Ordering::SeqCst) as usize;
        // Paused between steps: nothing happens until it is unpaused.
        if busy == 0 && self.paused.load(Ordering::SeqCst) {
            return true;
        }
        busy == backoffs.len()
            && !(waiting.is_empty() && backoffs.is_empty())
            && backoffs.iter().all(|d| *d > now_ms)
            && waiting
                .iter()
                .all(|c| c.deadline_ms.is_none_or(|d| d > now_ms) && !arrived(c))
    }

    /// The earliest deadline the instance waits out: a retry backoff, a
    /// sleep or a wait's timeout (feature `testing`).
    #[cfg(feature = "testing")]
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let backoffs = self.backoffs.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        backoffs
            .iter()
            .copied()
            .chain(waiting.iter().filter_map(|c| c.deadline_ms))
            .min()
    }

    /// Shows `attempt` as running until the guard drops.
    pub(crate) fn running(self: &Arc<Self>, attempt: InFlight) -> InFlightGuard {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.push(attempt.clone());
        InFlightGuard {
            signals: Arc::clone(self),
            attempt,
        }
    }

    /// Wakes every wait of the instance so it looks again.
    pub(crate) fn ring(&self) {
        self.bell.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Returns once the instance is not paused (at once if it is not).
    pub(crate) async fn unpaused(&self) {
        let mut bell = self.bell.subscribe();
        while self.paused.load(Ordering::SeqCst) && !self.is_cancelled() {
            if bell.changed().await.is_err() {
                return;
            }
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Marks the instance busy until the guard drops.
    pub(crate) fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(Arc::clone(self))
    }

    /// Registers a wait until the guard drops.
    pub(crate) fn wait(self: &Arc<Self>, cond: WaitCond) -> WaitGuard {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.push(cond.clone());
        WaitGuard {
            signals: Arc::clone(self),
            cond,
        }
    }

    /// The waits to park on, if the instance is blocked in waits only.
    pub(crate) fn parkable(&self, now_ms: u64, min_ms: u64) -> Option<Vec<WaitCond>> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let soon = waiting.iter().any(|c| {
            c.deadline_ms
                .is_some_and(|d| d < now_ms.saturating_add(min_ms))
        });
        (!waiting.is_empty() && !soon).then(|| waiting.clone())
    }
}

/// Decrements [`Signals::busy`] when dropped.
pub(crate) struct BusyGuard(Arc<Signals>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Removes a backoff from [`Signals::backoffs`] when dropped.
pub(crate) struct BackoffGuard {
    signals: Arc<Signals>,
    deadline_ms: u64,
}

impl Drop for BackoffGuard {
    fn drop(&mut self) {
        let mut backoffs = self
            .signals
            .backoffs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(i) = backoffs.iter().position(|d| *d == self.deadline_ms) {
            backoffs.swap_remove(i);
        }
    }
}

/// Removes a running attempt from [`Signals::in_flight`] when dropped.
pub(crate) struct InFlightGuard {
    signals: Arc<Signals>,
    attempt: InFlight,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut in_flight = self
            .signals
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(i) = in_flight.iter().position(|a| *a == self.attempt) {
            in_flight.swap_remove(i);
        }
    }
}

/// Removes a registered wait when dropped.
pub(crate) struct WaitGuard {
    signals: Arc<Signals>,
    cond: WaitCond,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut waiting = self
            .signals
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(i) = waiting.iter().position(|c| *c == self.cond) {
            waiting.swap_remove(i);
        }
    }
}

/// The context of one workflow instance: its id, its step counters and the
/// services it may use (the backend, the clock). `#[durable]` fns receive it
/// as their first argument.
pub struct Ctx {
    pub(crate) id: String,
    pub(crate) workflow: &'static str,
    pub(crate) services: Arc<Services>,
    pub(crate) policy: RetryPolicy,
    pub(crate) signals: Arc<Signals>,
    /// The lease this run holds: every write carries it.
    pub(crate) lease: crate::backend::Lease,
    /// Checkpoints loaded at start, by name then occurrence; taken as replayed.
    replay: Mutex<HashMap<String, HashMap<u32, CheckpointRecord>>>,
    /// Checkpoints of keyed steps loaded at start, by (name, key).
    keyed: Mutex<HashMap<(String, Vec<u8>), CheckpointRecord>>,
    /// The keys of keyed steps used so far in this run, per name.
    used_keys: Mutex<HashSet<(&'static str, Vec<u8>)>>,
    /// The next start sequence number (see `CheckpointRecord::seq`).
    seq: std::sync::atomic::AtomicU64,
    /// The patches of the manifest the instance started with, when that is
    /// not the manifest it runs on; `None`: it started on this code.
    started_patches: Mutex<Option<Vec<String>>>,
    /// Next occurrence number per step name.
    counters: Mutex<HashMap<&'static str, u32>>,
    /// Next offset per stream key (`Ctx::write_stream`), assigned in call order.
    pub(crate) stream_offsets: Mutex<HashMap<String, u64>>,
    /// Resumes in a row without finishing a step, as stored in `Active`.
    recoveries: AtomicU32,
    /// The suspects' lane, held by a suspect until it finishes a step.
    lane: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// The compensations of the steps that succeeded, in registration
    /// order (see `saga.rs`).
    pub(crate) compensations: Mutex<Vec<Compensation>>,
    /// The error that stopped this instance, if any.
    abort: Mutex<Option<Error>>,
    aborted: Notify,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What one run of an instance starts from.
pub(crate) struct RunStart {
    pub policy: RetryPolicy,
    /// Every checkpoint stored, replayed by the run.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Resumes in a row without finishing a step.
    pub recoveries: u32,
    /// The lease the run holds.
    pub lease: crate::backend::Lease,
}

impl Ctx {
    pub(crate) fn new(
        id: String,
        workflow: &'static str,
        services: Arc<Services>,
        signals: Arc<Signals>,
        start: RunStart,
    ) -> Ctx {
        let RunStart {
            policy,
            checkpoints,
            recoveries,
            lease,
        } = start;
        let mut replay: HashMap<String, HashMap<u32, CheckpointRecord>> = HashMap::new();
        let mut keyed = HashMap::new();
        let mut seq = 0;
        for record in checkpoints {
            seq = seq.max(record.seq.saturating_add(1));
            match &record.key {
                Some((key, _)) => {
                    keyed.insert((record.name.clone(), key.clone()), record);
                }
                None => {
                    replay
                        .entry(record.name.clone())
                        .or_default()
                        .insert(record.occurrence, record);
                }
            }
        }
        Ctx {
            id,
            workflow,
            services,
            policy,
            signals,
            lease,
            replay: Mutex::new(replay),
            keyed: Mutex::new(keyed),
            used_keys: Mutex::new(HashSet::new()),
            seq: std::sync::atomic::AtomicU64::new(seq),
            started_patches: Mutex::new(None),
            counters: Mutex::new(HashMap::new()),
            stream_offsets: Mutex::new(HashMap::new()),
            recoveries: AtomicU32::new(recoveries),
            lane: Mutex::new(None),
            compensations: Mutex::new(Vec::new()),
            abort: Mutex::new(None),
            aborted: Notify::new(),
        }
    }

    /// The instance's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A key for outside systems to deduplicate this step's side effect.
    ///
    /// Inside a step body it is stable for (instance id, step name,
    /// occurrence) across retries, replays and restarts, and differs between
    /// any two of those. Outside a step body it names the instance alone.
    pub fn idempotency_key(&self) -> String {
        STEP_SCOPE
            .try_with(|scope| scope.key.clone())
            .unwrap_or_else(|_| instance_idempotency_key(&self.id))
    }

    /// The name of the workflow this instance runs.
    pub fn workflow(&self) -> &str {
        self.workflow
    }

    pub(crate) fn step_key(&self, name: &str, at: &crate::records::At) -> String {
        match at {
            crate::records::At::Occurrence(occurrence) => {
                step_idempotency_key(&self.id, name, *occurrence)
            }
            crate::records::At::Key(bytes, _) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("durable:{}:{}:{name}:k{hex}", self.id.len(), self.id)
            }
        }
    }

    /// Claims `key` for keyed step `name`; `false` if this run used it already.
    pub(crate) fn claim_key(&self, name: &'static str, key: &[u8]) -> bool {
        self.used_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name, key.to_vec()))
    }

    /// The next start sequence number, for a site created now.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Records the patches of the manifest the instance started with, when
    /// it started on other code.
    pub(crate) fn set_started_patches(&self, patches: Option<Vec<String>>) {
        *self
            .started_patches
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = patches;
    }

    /// Whether the instance started on code that has patch `name`: what
    /// `patched!(name)` evaluates to. Deterministic: it depends only on the
    /// manifest the instance started with, which never changes.
    pub fn patched(&self, name: &str) -> bool {
        match &*self
            .started_patches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            None => true,
            Some(patches) => patches.iter().any(|p| p == name),
        }
    }

    /// Takes the loaded checkpoint of this step occurrence or key, if any.
    pub(crate) fn take_checkpoint_at(
        &self,
        name: &str,
        at: &crate::records::At,
    ) -> Option<CheckpointRecord> {
        match at {
            crate::records::At::Occurrence(n) => self.take_checkpoint(name, *n),
            crate::records::At::Key(key, _) => self
                .keyed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(name.to_string(), key.clone())),
        }
    }

    /// Milliseconds since the Unix epoch on the engine's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.services.clock.now_ms()
    }

    /// Resumes in a row without finishing a step.
    pub(crate) fn recoveries(&self) -> u32 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// Returns the count of resumes without progress and sets it to zero:
    /// the caller is about to record progress. A suspect leaves its lane.
    pub(crate) fn take_recoveries(&self) -> u32 {
        self.lane.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.recoveries.swap(0, Ordering::Relaxed)
    }

    /// Holds the suspects' lane (see `engine/driver.rs`) until progress or the end.
    pub(crate) fn hold_lane(&self, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        *self.lane.lock().unwrap_or_else(|e| e.into_inner()) = permit;
    }

    /// The next occurrence number of step `name`, assigned when the step is
    /// created so that `join!`ed steps number in source order.
    pub(crate) fn next_occurrence(&self, name: &'static str) -> u32 {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let n = counters.entry(name).or_insert(0);
        let occurrence = *n;
        *n = n.saturating_add(1);
        occurrence
    }

    /// Takes the loaded checkpoint of this step occurrence, if there is one.
    pub(crate) fn take_checkpoint(&self, name: &str, occurrence: u32) -> Option<CheckpointRecord> {
        let mut replay = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        let by_occurrence = replay.get_mut(name)?;
        let record = by_occurrence.remove(&occurrence);
        if by_occurrence.is_empty() {
            replay.remove(name);
        }
        record
    }

    /// The error for a checkpoint of another kind than the code now asks for.
    pub(crate) fn diverged(
        &self,
        name: &str,
        occurrence: u32,
        found: &CheckpointState,
        expected: &str,
    ) -> Error {
        let found = match found {
            CheckpointState::Retrying { .. }
            | CheckpointState::Done { .. }
            | CheckpointState::TooLarge { .. }
            | CheckpointState::Expired { .. }
            | CheckpointState::Panicked { .. } => "a step",
            CheckpointState::Sleeping { .. } => "a sleep",
            CheckpointState::Waiting { .. }
            | CheckpointState::Received { .. }
            | CheckpointState::TimedOut { .. } => "a wait for an event",
        };
        Error::Replay(crate::error::ReplayError::Nondeterminism {
            instance: self.id.clone(),
            detail: format!(
                "{name:?} (occurrence {occurrence}) was recorded as {found}, and the code now makes it {expected}"
            ),
        })
    }

    /// Finished checkpoints this run never reached, as `name#occurrence`.
    pub(crate) fn unreplayed(&self) -> Vec<String> {
        let replay = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        let keyed = self.keyed.lock().unwrap_or_else(|e| e.into_inner());
        let mut left: Vec<String> = replay
            .values()
            .flat_map(|m| m.values())
            .chain(keyed.values())
            .filter(|r| {
                !matches!(
                    r.state,
                    CheckpointState::Retrying { .. } | CheckpointState::Waiting { .. }
                )
            })
            .map(|r| match &r.key {
                Some((_, key)) => format!("{:?} key {key}", r.name),
                None => format!("{:?} occurrence {}", r.name, r.occurrence),
            })
            .collect();
        left.sort();
        left
    }

    /// Writes `record` as a checkpoint of this instance, fenced by its lease.
    pub(crate) async fn checkpoint(
        &self,
        record: CheckpointRecord,
        progress: bool,
    ) -> Result<(), Error> {
        self.services
            .backend
            .commit(
                &self.id,
                self.lease,
                crate::backend::Write::Checkpoint { record, progress },
            )
            .await
            .map(|_| ())
    }

    /// Stops the instance with `error`: records it and never returns, so the
    /// engine drops the workflow's future.
    pub(crate) async fn abort(&self, error: Error) -> ! {
        {
            let mut slot = self.abort.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(error);
            }
        }
        self.aborted.notify_one();
        std::future::pending().await
    }

    /// Resolves with the error once [`abort`](Self::abort) was called.
    pub(crate) async fn aborted(&self) -> Error {
        loop {
            if let Some(e) = self.abort.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return e;
            }
            self.aborted.notified().await;
        }
    }
}

/// A compensation as the step holds it: called with the step's value, it
/// returns the compensation's future; its error as `Debug` text.
pub(crate) type Undo<T> = Box<dyn Fn(T) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A compensation bound to its step's value: decodes the value and calls
/// the compensation with it (`Err`: the value does not decode).
pub(crate) type Bound =
    Box<dyn Fn() -> Result<BoxFuture<'static, Result<(), String>>, String> + Send + Sync>;

/// One registered compensation: the step it undoes and how to run it.
pub(crate) struct Compensation {
    pub step: &'static str,
    pub at: At,
    /// The step's start sequence number: compensations run in its reverse.
    pub seq: u64,
    pub policy: Option<RetryPolicy>,
    /// Decodes the step's value and calls the compensation with it (once
    /// per attempt).
    pub run: Bound,
}

impl std::fmt::Debug for Compensation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compensation")
            .field("step", &self.step)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}
