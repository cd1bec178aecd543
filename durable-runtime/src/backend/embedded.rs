//! The embedded backend: one process over a KV [`Store`] (sled with its
//! write-ahead log, or memory), through the [`Journal`].
//!
//! It is a single worker that holds every lease. What a shared database
//! keeps in rows it keeps in memory, which is right because the store is
//! locked to this process: which instances are owned and with which epoch,
//! the park table (its index of due timers, loaded from the `Timers` tree
//! at open), and the parked instances whose event arrived. Epochs move on
//! every claim and on cancel, so a cancelled owner's late writes are refused
//! as they are on PostgreSQL.
//!
//! Decisions that must not race take locks in one order: the event gate
//! (events, cancels, timeouts), then the instance's stripe (its record,
//! park and end writes), then the state mutex (never held across an await).

mod queues;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::park::ParkTable;
use super::{
    Backend, BoxFuture, Claim, ClaimKind, Committed, Created, EventCheck, Lease, Notice, Reopen,
    Round, Write,
};
use crate::error::{Error, InstanceError, Result, StoreError, UsageError};
use crate::journal::Journal;
use crate::listing::{ListFilter, Page};
use crate::manifest::Manifest;
use crate::records::{CheckpointRecord, EventRecord, InstanceRecord, InstanceState, ParkRecord};
use crate::store::Store;
use crate::time::Clock;

/// Stripes of per-instance locks: an instance's writes and the decisions
/// about it (events, cancel) are ordered by its stripe.
const STRIPES: usize = 64;

/// The embedded backend.
pub(crate) struct Embedded {
    journal: Journal,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Serializes event delivery, time-outs and cancellation.
    gate: tokio::sync::Mutex<()>,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    /// Seeds the stripe hash.
    hasher: std::collections::hash_map::RandomState,
    epochs: AtomicU64,
    notices: broadcast::Sender<Notice>,
    /// The queue index (see `queues.rs`), built at the first queue call;
    /// its mutex is the queue lock.
    queues: tokio::sync::Mutex<Option<queues::QueueIndex>>,
}

#[derive(Default)]
struct State {
    /// Instances owned now, with the epoch of their lease.
    owned: HashMap<String, u64>,
    /// Parked instances: what they wait for, and the timer index.
    parked: ParkTable,
    /// Parked instances whose awaited event arrived: claimable.
    ready: Vec<String>,
    /// Parked instances of workflows this process does not run: shown in
    /// status and listings, never woken here.
    foreign: HashMap<String, ParkRecord>,
    /// Paused instances: never claimed.
    paused: std::collections::HashSet<String>,
    /// Owned instances whose stored transitions differ from their owner's
    /// copy since the claim (an operator recorded a pause or a cancel
    /// request, or a write appended one): the owner's next write that
    /// appends a transition reads the stored ones.
    touched: std::collections::HashSet<String>,
    /// Paused instances that came due (or were runnable) while paused:
    /// claimable once unpaused.
    held: Vec<String>,
    /// Unfinished instances found at open, for the first claim round:
    /// (id bytes, resumes without progress).
    pending: Option<Vec<(Vec<u8>, u32)>>,
}

impl State {
    /// Ends this process's ownership of `id`: the epoch it was owned with.
    fn disown(&mut self, id: &str) -> Option<u64> {
        self.touched.remove(id);
        self.owned.remove(id)
    }
}

impl Embedded {
    /// The backend over `store`: starts its committer and reads the
    /// unfinished instances and park records (blocking reads, once).
    pub(crate) fn open(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Embedded> {
        // Read before the committer starts: a failed read leaves nothing
        // running that holds the store.
        let (active, parks) = Journal::unfinished_of(&*store)?;
        let journal = Journal::start(store)?;
        let now = clock.now_ms();
        let mut state = State::default();
        for (key, park) in parks {
            let Ok(id) = std::str::from_utf8(&key) else {
                continue;
            };
            // Only unfinished, running instances are parked; the first
            // round checks the record. A clock set backwards meanwhile
            // cannot stretch a wait.
            if active.iter().any(|(k, _)| *k == key) {
                let clamp = |d: u64| d.min(now.saturating_add(d.saturating_sub(park.parked_at_ms)));
                state.parked.insert(id, &park.conds, clamp);
            }
        }
        state.pending = Some(active);
        Ok(Embedded {
            journal,
            clock,
            state: Mutex::new(state),
            gate: tokio::sync::Mutex::new(()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            epochs: AtomicU64::new(1),
            notices: broadcast::channel(1024).0,
            queues: tokio::sync::Mutex::new(None),
        })
    }

    /// The journal (for the tables of `embedded_rows`).
    pub(super) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The lock stripe of `name` (for the tables of `embedded_rows`).
    pub(super) fn row_stripe(&self, name: &str) -> &tokio::sync::Mutex<()> {
        self.stripe(name)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stripe(&self, id: &str) -> &tokio::sync::Mutex<()> {
        &self.stripes[self.stripe_index(id)]
    }

    fn stripe_index(&self, id: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write(id.as_bytes());
        (h.finish() as usize) % STRIPES
    }

    fn notify(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

    /// A fresh lease on `id`, recorded as owned.
    fn own(&self, state: &mut State, id: &str) -> Lease {
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
        state.owned.insert(id.to_string(), epoch);
        state.touched.remove(id);
        Lease { epoch, owner: 0 }
    }

    /// `LeaseLost` unless `id` is owned with `lease`.
    fn fence(&self, id: &str, lease: Lease) -> Result<()> {
        if self.state().owned.get(id) == Some(&lease.epoch) {
            Ok(())
        } else {
            Err(Error::Instance(InstanceError::LeaseLost {
                instance: id.to_string(),
                epoch: lease.epoch,
            }))
        }
    }

    /// Whether an event one of `park`'s waits awaits is stored.
    fn awaited_event_stored(&self, id: &str, park: &ParkRecord) -> Result<bool> {
        for cond in park.conds.iter().filter(|c| c.event_type.is_some()) {
            if self.journal.has_event(id, &cond.name, cond.occurrence)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Claims unfinished `id` with `recoveries` if it is not owned or parked.
    fn claim_now(
        &self,
        id: &str,
        record: InstanceRecord,
        recoveries: u32,
        kind: ClaimKind,
    ) -> Option<Claim> {
        let mut state = self.state();
        if state.owned.contains_key(id) || state.parked.contains(id) {
            return None;
        }
        state.ready.retain(|r| r != id);
        let lease = self.own(&mut state, id);
        Some(Claim {
            id: id.to_string(),
            lease,
            record,
            recoveries,
            kind,
        })
    }

    /// The first round: every unfinished instance found at open.
    fn first_round(
        &self,
        pending: Vec<(Vec<u8>, u32)>,
        workflows: &[(&'static str, u32)],
        round: &mut Round,
    ) {
        for (key, recoveries) in pending {
            let id = match String::from_utf8(key) {
                Ok(id) => id,
                Err(e) => {
                    round.passed_over.push((
                        String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        Err("the id is not UTF-8".into()),
                    ));
                    continue;
                }
            };
            let record = match self.journal.load(&id) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    round
                        .passed_over
                        .push((id, Err("listed as unfinished but has no record".into())));
                    continue;
                }
                Err(e) => {
                    round.passed_over.push((id, Err(e.to_string())));
                    continue;
                }
            };
            if record.queued() {
                // Waits in its queue for a dispatch.
                continue;
            }
            if record.paused_since().is_some() {
                // Not run while paused; a parked one keeps its timer entry
                // (held when it comes due).
                let mut state = self.state();
                state.paused.insert(id.clone());
                if !state.parked.contains(&id) {
                    state.held.push(id);
                }
                continue;
            }
            if let InstanceState::NeedsAttention { error } = &record.state {
                let reason = format!("needs attention: {error}");
                round.passed_over.push((id, Err(reason)));
                continue;
            }
            if !workflows
                .iter()
                .any(|(name, version)| *name == record.workflow && *version == record.version)
            {
                let mut state = self.state();
                if let Some(parked) = state.parked.remove(&id)
                    && record.state == InstanceState::Running
                {
                    state.foreign.insert(id.clone(), parked.to_record());
                }
                drop(state);
                round.passed_over.push((id, Ok(record)));
                continue;
            }
            let parked = self.state().parked.get(&id).map(|p| p.to_record());
            if let Some(park) = parked {
                if record.state == InstanceState::Running {
                    // Parked when the process stopped: its timer or event
                    // wakes it (at once if the event came meanwhile).
                    round.parked += 1;
                    if self.awaited_event_stored(&id, &park).unwrap_or(true) {
                        let mut state = self.state();
                        state.parked.remove(&id);
                        state.ready.push(id);
                    }
                    continue;
                }
                // A park record left by a run that then stopped otherwise.
                self.state().parked.remove(&id);
            }
            if let Some(claim) = self.claim_now(&id, record, recoveries, ClaimKind::Recover) {
                round.claims.push(claim);
            }
        }
    }

    /// Stores an event (see `Backend::send_event`), unless `key` was
    /// stored with an event before: then `None`.
    async fn deliver(
        &self,
        id: &str,
        name: &str,
        event: EventRecord,
        check: EventCheck<'_>,
        key: Option<&str>,
    ) -> Result<Option<u32>> {
        let _gate = self.gate.lock().await;
        let _stripe = self.stripe(id).lock().await;
        let record = self.journal.load(id)?.ok_or_else(|| not_found(id))?;
        if let Some(key) = key
            && self.journal.has_send_key(id, key)?
        {
            return Ok(None);
        }
        ensure_unfinished(id, &record.state)?;
        let seq = self.journal.next_event_seq(id, name)?;
        let parked_type = {
            let state = self.state();
            state.parked.get(id).and_then(|p| {
                p.events
                    .iter()
                    .find(|e| &*e.name == name && e.occurrence == seq)
                    .map(|e| e.type_name.to_string())
            })
        };
        let timed_out_before = match seq.checked_sub(1) {
            Some(previous) => self.journal.wait_timed_out(id, name, previous)?,
            None => false,
        };
        check(&record, seq, parked_type.as_deref(), timed_out_before)?;
        self.journal.put_event(id, name, seq, &event, key).await?;
        let woken = {
            let mut state = self.state();
            let waits = state.parked.get(id).is_some_and(|p| {
                p.events
                    .iter()
                    .any(|e| &*e.name == name && e.occurrence == seq)
            });
            if waits && state.parked.remove(id).is_some() {
                state.ready.push(id.to_string());
                true
            } else {
                false
            }
        };
        self.notify(if woken {
            Notice::Ready
        } else {
            Notice::Event {
                id: id.to_string(),
                name: name.to_string(),
            }
        });
        Ok(Some(seq))
    }

    fn lost(id: &str, lease: Lease) -> Error {
        Error::Instance(InstanceError::LeaseLost {
            instance: id.to_string(),
            epoch: lease.epoch,
        })
    }

    async fn commit_inner(&self, id: &str, lease: Lease, write: Write) -> Result<Committed> {
        match write {
            Write::Checkpoint { record, progress } => {
                self.fence(id, lease)?;
                self.journal.checkpoint(id, &record, progress).await?;
                Ok(Committed::Written)
            }
            Write::Record {
                mut record,
                active,
                appended,
            } => {
                let _stripe = self.stripe(id).lock().await;
                self.fence(id, lease)?;
                let appending = appended.is_some();
                if let Some(transition) = appended {
                    // Read only if the record was rewritten since the claim
                    // by an operator or by such a write: otherwise the
                    // owner's transitions are the stored ones.
                    let stored = match self.state().touched.remove(id) {
                        true => self.journal.load(id)?.map(|r| r.transitions),
                        false => None,
                    };
                    record.restate(stored, transition);
                }
                let running = record.state == InstanceState::Running;
                self.journal.commit_record(id, &record, active).await?;
                if running && appending {
                    // The owner's copy lacks the transition appended here.
                    self.state().touched.insert(id.to_string());
                }
                if !running {
                    let mut state = self.state();
                    state.disown(id);
                    state.parked.remove(id);
                    drop(state);
                    // Only a queue's dispatch loop waits on an end here (a
                    // slot to fill): the lease holder that wrote it is the
                    // task that resolves the instance's handles, and no other
                    // process shares the store. A hint for every end would
                    // wake the claim loop for nothing once per instance.
                    if record.queue_entry().is_some() {
                        self.notify(Notice::Ended { id: id.to_string() });
                    }
                }
                Ok(Committed::Written)
            }
            Write::Park(park) => {
                let _stripe = self.stripe(id).lock().await;
                self.fence(id, lease)?;
                if self.awaited_event_stored(id, &park)? {
                    return Ok(Committed::EventFirst);
                }
                self.journal.park(id, &park).await?;
                let mut state = self.state();
                if state.owned.get(id) != Some(&lease.epoch) {
                    // Cancelled while the park record was written: the
                    // cancel removed it from the table already.
                    return Err(Self::lost(id, lease));
                }
                state.disown(id);
                let earliest = state.parked.insert(id, &park.conds, |d| d);
                drop(state);
                if earliest {
                    self.notify(Notice::Ready);
                }
                Ok(Committed::Written)
            }
            Write::Publish { record, key, value } => {
                self.fence(id, lease)?;
                self.journal.publish(id, &record, &key, &value).await?;
                self.notify(Notice::Published {
                    id: id.to_string(),
                    key,
                });
                Ok(Committed::Written)
            }
            Write::Append {
                record,
                key,
                offset,
                value,
            } => {
                self.fence(id, lease)?;
                self.journal
                    .append(id, &record, (&key, offset), &value)
                    .await?;
                self.notify(Notice::Published {
                    id: id.to_string(),
                    key,
                });
                Ok(Committed::Written)
            }
            Write::TimeOut { record } => {
                let _gate = self.gate.lock().await;
                let _stripe = self.stripe(id).lock().await;
                self.fence(id, lease)?;
                if self
                    .journal
                    .has_event(id, &record.name, record.occurrence)?
                {
                    return Ok(Committed::EventFirst);
                }
                self.journal.checkpoint(id, &record, false).await?;
                Ok(Committed::Written)
            }
        }
    }
}

/// [`UsageError::InstanceFinished`] if the instance has finished.
pub(crate) fn ensure_unfinished(id: &str, state: &InstanceState) -> Result<()> {
    let status = match state {
        InstanceState::Completed { .. } | InstanceState::Returned { .. } => "completed",
        InstanceState::Failed { .. } => "failed",
        InstanceState::Cancelled => "cancelled",
        _ => return Ok(()),
    };
    Err(Error::Usage(UsageError::InstanceFinished {
        instance: id.to_string(),
        status,
    }))
}

fn not_found(id: &str) -> Error {
    Error::Usage(UsageError::NotFound { id: id.to_string() })
}

impl Backend for Embedded {
    fn create<'a>(
        &'a self,
        id: &'a str,
        record: &'a InstanceRecord,
    ) -> BoxFuture<'a, Result<Created>> {
        self.create_with(id, record, &[])
    }

    fn create_many<'a>(
        &'a self,
        items: &'a [(String, InstanceRecord)],
    ) -> BoxFuture<'a, Result<Vec<Created>>> {
        Box::pin(async move {
            // Each stripe once, in index order (no two callers wait on
            // each other in opposite orders).
            let mut stripes: Vec<usize> =
                items.iter().map(|(id, _)| self.stripe_index(id)).collect();
            stripes.sort_unstable();
            stripes.dedup();
            let mut guards = Vec::with_capacity(stripes.len());
            for i in stripes {
                guards.push(self.stripes[i].lock().await);
            }
            let mut answers = Vec::with_capacity(items.len());
            let mut new = Vec::new();
            for (id, record) in items {
                match self.journal.load(id)? {
                    Some(existing) => answers.push(Created::Exists(existing)),
                    None => {
                        answers.push(Created::New(self.own(&mut self.state(), id)));
                        new.push((id.as_str(), record));
                    }
                }
            }
            if !new.is_empty()
                && let Err(e) = self.journal.create_many(&new).await
            {
                let mut state = self.state();
                for (id, _) in &new {
                    state.disown(id);
                }
                return Err(e);
            }
            Ok(answers)
        })
    }

    fn create_with<'a>(
        &'a self,
        id: &'a str,
        record: &'a InstanceRecord,
        checkpoints: &'a [CheckpointRecord],
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(async move {
            let _stripe = self.stripe(id).lock().await;
            if let Some(existing) = self.journal.load(id)? {
                return Ok(Created::Exists(existing));
            }
            let lease = self.own(&mut self.state(), id);
            if let Err(e) = self.journal.create_with(id, record, checkpoints).await {
                self.state().disown(id);
                return Err(e);
            }
            Ok(Created::New(lease))
        })
    }

    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<InstanceRecord>>> {
        Box::pin(async move { self.journal.load(id) })
    }

    fn park_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ParkRecord>>> {
        Box::pin(async move {
            let state = self.state();
            Ok(match state.parked.get(id) {
                Some(parked) => Some(parked.to_record()),
                None => state.foreign.get(id).cloned(),
            })
        })
    }

    fn checkpoints<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<CheckpointRecord>>> {
        Box::pin(async move { self.journal.load_checkpoints(id) })
    }

    fn event<'a>(
        &'a self,
        id: &'a str,
        name: &'a str,
        seq: u32,
    ) -> BoxFuture<'a, Result<Option<EventRecord>>> {
        Box::pin(async move { self.journal.event(id, name, seq) })
    }

    fn events_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<(String, u64, String)>>> {
        Box::pin(async move { self.journal.events_of(id) })
    }

    #[cfg(feature = "testing")]
    fn event_records<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, u32, EventRecord)>>> {
        Box::pin(async move { self.journal.events_with_payloads(id) })
    }

    fn list<'a>(&'a self, filter: &'a ListFilter) -> BoxFuture<'a, Result<Page>> {
        Box::pin(async move {
            crate::listing::list_by_created(
                filter,
                |before, limit| self.journal.created_page(before, limit),
                |id| {
                    let record = self.journal.load(id)?;
                    Ok(record.map(|r| {
                        let park = self.state().parked.get(id).map(|p| p.to_record());
                        (r, park)
                    }))
                },
            )
        })
    }

    fn claim<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Claim>>> {
        Box::pin(async move {
            let _stripe = self.stripe(id).lock().await;
            let Some(record) = self.journal.load(id)? else {
                return Ok(None);
            };
            if ensure_unfinished(id, &record.state).is_err()
                || self.state().paused.contains(id)
                || record.queued()
            {
                return Ok(None);
            }
            let recoveries = self.journal.recoveries(id)?;
            Ok(self.claim_now(id, record, recoveries, ClaimKind::Recover))
        })
    }

    fn claim_due<'a>(
        &'a self,
        workflows: &'a [(&'static str, u32)],
        limit: usize,
    ) -> BoxFuture<'a, Result<Round>> {
        Box::pin(async move {
            let mut round = Round::default();
            let pending = self.state().pending.take();
            if let Some(pending) = pending {
                self.first_round(pending, workflows, &mut round);
            }
            let woken = {
                let mut state = self.state();
                let mut woken: Vec<String> = std::mem::take(&mut state.ready);
                let now = self.clock.now_ms();
                woken.extend(state.parked.take_due(now).iter().map(|id| id.to_string()));
                // Paused: held until unpaused.
                let (held, woken): (Vec<String>, Vec<String>) =
                    woken.into_iter().partition(|id| state.paused.contains(id));
                state.held.extend(held);
                woken
            };
            for (i, id) in woken.iter().enumerate() {
                if round.claims.len() >= limit {
                    // Not claimed this round: back among the ready.
                    self.state().ready.extend(woken[i..].iter().cloned());
                    break;
                }
                let record = match self.journal.load(id)? {
                    Some(record) if record.state == InstanceState::Running => record,
                    _ => continue,
                };
                if let Some(claim) = self.claim_now(id, record, 0, ClaimKind::Wake) {
                    round.claims.push(claim);
                }
            }
            Ok(round)
        })
    }

    fn enqueue_many<'a>(
        &'a self,
        items: &'a [(String, InstanceRecord)],
    ) -> BoxFuture<'a, Result<Vec<super::Queued>>> {
        Box::pin(self.enqueue_inner(items))
    }

    fn dispatch<'a>(
        &'a self,
        spec: &'a super::QueueSpec,
        workflows: &'a [(&'static str, u32)],
        room: usize,
    ) -> BoxFuture<'a, Result<Vec<Claim>>> {
        Box::pin(self.dispatch_inner(spec, workflows, room))
    }

    fn queue_stats(&self) -> BoxFuture<'_, Result<Vec<super::QueueStats>>> {
        Box::pin(self.queue_stats_inner())
    }

    fn next_due(&self) -> Option<u64> {
        let state = self.state();
        if !state.ready.is_empty() {
            return Some(0);
        }
        state.parked.next_deadline()
    }

    fn commit<'a>(
        &'a self,
        id: &'a str,
        lease: Lease,
        write: Write,
    ) -> BoxFuture<'a, Result<Committed>> {
        Box::pin(self.commit_inner(id, lease, write))
    }

    fn release<'a>(&'a self, id: &'a str, lease: Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.state();
            if state.owned.get(id) == Some(&lease.epoch) {
                state.disown(id);
            }
            Ok(())
        })
    }

    fn send_event<'a>(
        &'a self,
        id: &'a str,
        name: &'a str,
        event: EventRecord,
        check: EventCheck<'a>,
    ) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let seq = self.deliver(id, name, event, check, None).await?;
            Ok(seq.unwrap_or_default())
        })
    }

    fn send_event_keyed<'a>(
        &'a self,
        id: &'a str,
        name: &'a str,
        event: EventRecord,
        check: EventCheck<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>>> {
        Box::pin(self.deliver(id, name, event, check, Some(key)))
    }

    fn stream<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(u64, EventRecord)>>> {
        Box::pin(async move {
            if self.journal.load(id)?.is_none() {
                return Err(not_found(id));
            }
            self.journal.stream(id, key, from, limit)
        })
    }

    fn published<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<EventRecord>>> {
        Box::pin(async move {
            let value = self.journal.published(id, key)?;
            if value.is_none() && self.journal.load(id)?.is_none() {
                return Err(not_found(id));
            }
            Ok(value)
        })
    }

    fn cancel<'a>(
        &'a self,
        id: &'a str,
        update: &'a (dyn Fn(InstanceRecord) -> InstanceRecord + Send + Sync),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _gate = self.gate.lock().await;
            let _stripe = self.stripe(id).lock().await;
            let record = self.journal.load(id)?.ok_or_else(|| not_found(id))?;
            ensure_unfinished(id, &record.state)?;
            let record = update(record);
            // The owner's later writes are refused from here on.
            let previous = {
                let mut state = self.state();
                let previous = state.disown(id);
                state.parked.remove(id);
                state.ready.retain(|r| r != id);
                previous
            };
            if let Err(e) = self.journal.commit_record(id, &record, None).await {
                if let Some(epoch) = previous {
                    // Not cancelled after all: the owner carries on.
                    self.state().owned.insert(id.to_string(), epoch);
                }
                return Err(e);
            }
            self.notify(Notice::Cancelled { id: id.to_string() });
            Ok(())
        })
    }

    fn reopen<'a>(&'a self, id: &'a str, decide: Reopen<'a>) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let _gate = self.gate.lock().await;
            let _stripe = self.stripe(id).lock().await;
            let record = self.journal.load(id)?.ok_or_else(|| not_found(id))?;
            let checkpoints = self.journal.load_checkpoints(id)?;
            let Some((record, set_aside)) = decide(record, checkpoints)? else {
                return Ok(false);
            };
            // A late owner (there should be none: the instance was stopped)
            // is fenced out from here on.
            let previous = {
                let mut state = self.state();
                let previous = state.disown(id);
                state.parked.remove(id);
                state.ready.retain(|r| r != id);
                previous
            };
            if let Err(e) = self.journal.reopen(id, &record, &set_aside).await {
                if let Some(epoch) = previous {
                    self.state().owned.insert(id.to_string(), epoch);
                }
                return Err(e);
            }
            self.state().ready.push(id.to_string());
            self.notify(Notice::Ready);
            Ok(true)
        })
    }

    fn set_paused<'a>(
        &'a self,
        id: &'a str,
        paused: bool,
        update: &'a (dyn Fn(InstanceRecord) -> Option<InstanceRecord> + Send + Sync),
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let _gate = self.gate.lock().await;
            let _stripe = self.stripe(id).lock().await;
            let record = self.journal.load(id)?.ok_or_else(|| not_found(id))?;
            ensure_unfinished(id, &record.state)?;
            let Some(record) = update(record) else {
                return Ok(false);
            };
            let recoveries = self.journal.recoveries(id)?;
            self.journal
                .commit_record(id, &record, Some(recoveries))
                .await?;
            {
                let mut state = self.state();
                if state.owned.contains_key(id) {
                    state.touched.insert(id.to_string());
                }
                if paused {
                    state.paused.insert(id.to_string());
                } else {
                    state.paused.remove(id);
                    let held = state.held.len();
                    state.held.retain(|h| h != id);
                    if state.held.len() < held {
                        state.ready.push(id.to_string());
                    }
                }
            }
            self.notify(Notice::Paused { id: id.to_string() });
            if !paused {
                self.notify(Notice::Ready);
            }
            Ok(true)
        })
    }

    fn purge(&self, before_ms: u64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            const PAGE: usize = 256;
            let mut purged = 0;
            // Finished before the cutoff means created before it: the
            // creation index is read from there backwards.
            let mut before = crate::records::created_key(before_ms, "");
            loop {
                let keys = self.journal.created_before(&before, PAGE)?;
                let Some(last) = keys.last() else { break };
                before = last.clone();
                for key in &keys {
                    let Some(id) = crate::records::id_of_created_key(key) else {
                        continue;
                    };
                    let _gate = self.gate.lock().await;
                    let _stripe = self.stripe(id).lock().await;
                    let Some(record) = self.journal.load(id)? else {
                        continue;
                    };
                    let finished = ensure_unfinished(id, &record.state).is_err();
                    let ended_at = record.transitions.last().map_or(0, |t| t.at_ms);
                    if finished && ended_at < before_ms {
                        self.journal.purge(id, record.created_at_ms).await?;
                        purged += 1;
                    }
                }
                if keys.len() < PAGE {
                    break;
                }
            }
            Ok(purged)
        })
    }

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            Ok(self
                .journal
                .active()?
                .into_iter()
                .map(|(key, _)| String::from_utf8_lossy(&key).into_owned())
                .collect())
        })
    }

    fn manifest(&self, hash: u64) -> BoxFuture<'_, Result<Option<Manifest>>> {
        Box::pin(async move { Ok(self.journal.manifest(hash)) })
    }

    fn store_manifests<'a>(&'a self, manifests: &'a [&'a Manifest]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.journal.index_existing().await?;
            self.journal.store_manifests(manifests).await
        })
    }

    fn rows(&self, table: super::Table) -> BoxFuture<'_, Result<super::Rows>> {
        Box::pin(async move { self.rows_of(table) })
    }

    fn update_row<'a>(
        &'a self,
        table: super::Table,
        key: &'a str,
        decide: super::DecideRow<'a>,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(self.update_row_of(table, key, decide))
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn failure(&self) -> Option<StoreError> {
        self.journal.failure()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.journal.close())
    }

    #[cfg(feature = "hooks")]
    fn parked_count(&self) -> usize {
        self.state().parked.len()
    }

    #[cfg(feature = "hooks")]
    fn commit_stats(&self) -> (u64, u64) {
        let stats = self.journal.stats();
        (
            stats.batches.load(Ordering::Relaxed),
            stats.groups.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{CheckpointState, TransitionKind, TransitionRecord};
    use crate::store::MemoryStore;
    use crate::time::SystemClock;

    fn record() -> InstanceRecord {
        InstanceRecord {
            workflow: "w".into(),
            version: 1,
            manifest: 0,
            input: vec![1],
            state: InstanceState::Running,
            created_at_ms: 1,
            transitions: vec![TransitionRecord {
                at_ms: 1,
                kind: TransitionKind::Started,
            }],
        }
    }

    fn checkpoint(name: &str) -> Write {
        Write::Checkpoint {
            record: CheckpointRecord {
                name: name.into(),
                occurrence: 0,
                key: None,
                declared: true,
                seq: 0,
                attempts: 1,
                started_at_ms: 1,
                state: CheckpointState::Retrying {
                    last_error: "e".into(),
                },
            },
            progress: false,
        }
    }

    fn backend() -> Embedded {
        Embedded::open(Arc::new(MemoryStore::new()), Arc::new(SystemClock)).unwrap()
    }

    #[tokio::test]
    async fn create_is_create_if_absent_and_claims_are_exclusive() {
        let b = backend();
        let Created::New(lease) = b.create("a", &record()).await.unwrap() else {
            panic!("not new")
        };
        assert!(matches!(
            b.create("a", &record()).await.unwrap(),
            Created::Exists(_)
        ));
        // Owned: nobody else claims it.
        assert!(b.claim("a").await.unwrap().is_none());
        b.release("a", lease).await.unwrap();
        let claim = b
            .claim("a")
            .await
            .unwrap()
            .expect("claimable once released");
        assert_ne!(claim.lease, lease);
        // The old lease is fenced out; the new one writes.
        let refused = b.commit("a", lease, checkpoint("s")).await.unwrap_err();
        assert!(
            matches!(refused, Error::Instance(InstanceError::LeaseLost { .. })),
            "{refused:?}"
        );
        b.commit("a", claim.lease, checkpoint("s")).await.unwrap();
        assert_eq!(b.checkpoints("a").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_owner_writes_nothing_more() {
        let b = backend();
        let Created::New(lease) = b.create("a", &record()).await.unwrap() else {
            panic!("not new")
        };
        b.cancel("a", &|mut r| {
            r.state = InstanceState::Cancelled;
            r
        })
        .await
        .unwrap();
        for write in [
            checkpoint("late"),
            Write::Record {
                record: record(),
                active: None,
                appended: None,
            },
        ] {
            let refused = b.commit("a", lease, write).await.unwrap_err();
            assert!(matches!(
                refused,
                Error::Instance(InstanceError::LeaseLost { .. })
            ));
        }
        assert!(b.checkpoints("a").await.unwrap().is_empty());
        let stored = b.load("a").await.unwrap().unwrap();
        assert_eq!(stored.state, InstanceState::Cancelled);
        // A second cancel is refused: it has finished.
        let again = b.cancel("a", &|r| r).await.unwrap_err();
        assert!(matches!(
            again,
            Error::Usage(UsageError::InstanceFinished { .. })
        ));
    }
}
