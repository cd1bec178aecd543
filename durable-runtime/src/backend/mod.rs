//! The storage seam at the level of instances: what the engine needs from
//! durable storage, asked asynchronously, with every write of an
//! instance's owner fenced by the epoch it claimed the instance with.
//!
//! Two implementations:
//!
//! - `embedded`: one process over a KV [`Store`](crate::store::Store)
//!   (sled with its write-ahead log, or memory). It is a single worker that
//!   holds every lease; its park table is its index of due timers. Epochs
//!   still move on cancel, so a cancelled owner's late writes are refused
//!   exactly as on a shared database.
//! - `postgres` (feature `postgres`): many processes on one schema, with
//!   claims (`FOR UPDATE SKIP LOCKED`), worker leases on the database's
//!   clock, and LISTEN/NOTIFY wake-up hints over polling.
//!
//! The engine decides nothing that another process could change from its
//! own memory: creation is create-if-absent, ownership is a claim, event
//! numbering, payload checks, timeouts and cancellation are decided by the
//! backend under the instance's lock. Local maps are caches for attaching
//! handles and ringing waits.

pub(crate) mod embedded;
mod embedded_rows;
pub(crate) mod park;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;
use crate::listing::{ListFilter, Page};
use crate::manifest::Manifest;
use crate::records::{CheckpointRecord, EventRecord, InstanceRecord, ParkRecord, TransitionRecord};

/// A boxed, sendable future (the seam is object-safe).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The right to write one instance: the epoch it was claimed with. Every
/// owner's write carries it; the backend refuses the write with
/// [`InstanceError::LeaseLost`](crate::InstanceError::LeaseLost) once the
/// instance's epoch moved (taken over by another worker, or cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub epoch: u64,
    /// The worker the lease was granted to (PostgreSQL: its `workers` row;
    /// 0 on the embedded backend, whose one process holds every lease).
    pub owner: i64,
}

/// What [`Backend::create`] did.
#[derive(Debug)]
pub(crate) enum Created {
    /// The instance is new and owned by the caller with this lease.
    New(Lease),
    /// An instance with that id already exists (it was not changed).
    Exists(InstanceRecord),
    /// The instance is new and owned by nobody: the first claim runs it
    /// ([`Backend::create_unclaimed`]).
    Unclaimed,
}

/// Why an instance was claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimKind {
    /// A parked instance whose timer is due or whose awaited event arrived:
    /// not a recovery.
    Wake,
    /// As [`Wake`](Self::Wake), with no checkpoint stored (the claim saw
    /// none): an instance a pure client started, claimed for the first
    /// time, has nothing to replay and nothing to read before it runs.
    /// Only PostgreSQL's claims say so: the embedded store's checkpoint
    /// reads are local.
    #[cfg(feature = "postgres")]
    Unstarted,
    /// An unfinished instance nobody owns: its owner died or stopped, or it
    /// was blocked and someone attached. Counts towards `max_recoveries`.
    Recover,
}

/// An instance the caller now owns.
#[derive(Debug)]
pub(crate) struct Claim {
    pub id: String,
    pub lease: Lease,
    pub record: InstanceRecord,
    /// Resumes without progress so far (stored).
    pub recoveries: u32,
    pub kind: ClaimKind,
}

/// What one round of [`Backend::claim_due`] did.
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// The instances claimed.
    pub claims: Vec<Claim>,
    /// Unfinished instances this round left alone: `Ok(record)` when its
    /// workflow is not among those named, `Err(reason)` otherwise (it needs
    /// attention, its record does not decode). Reported by recovery.
    pub passed_over: Vec<(String, std::result::Result<InstanceRecord, String>)>,
    /// Unfinished instances found parked (left to their timer or event).
    pub parked: usize,
}

/// One fenced write of an instance's owner.
#[derive(Debug)]
pub(crate) enum Write {
    /// A checkpoint (keyed by name and occurrence or key). With `progress`,
    /// the count of resumes without progress goes back to zero.
    Checkpoint {
        record: CheckpointRecord,
        progress: bool,
    },
    /// The instance record. `active: Some(n)`: unfinished (running again,
    /// or blocked), with `n` resumes without progress. `None`: finished;
    /// its park record goes. A record whose state is not `Running` releases
    /// the instance (nobody owns a blocked or finished instance).
    ///
    /// With `appended`, the record's transitions are not its own but the
    /// stored ones followed by `appended`, read and written under the
    /// instance's lock: an operator may have recorded some since the claim
    /// (a pause, a cancel request), and none is lost (see
    /// [`InstanceRecord::restate`]).
    Record {
        record: InstanceRecord,
        active: Option<u32>,
        appended: Option<TransitionRecord>,
    },
    /// Parks the instance on what `park` waits for and releases it, unless
    /// an awaited event is already stored: then nothing is written, the
    /// lease still holds and the result is [`Committed::EventFirst`].
    Park(ParkRecord),
    /// A wait's timeout: writes `record` (a `TimedOut` checkpoint) unless the
    /// event it waits for (its name and occurrence) was stored first: then
    /// nothing is written and the result is [`Committed::EventFirst`].
    TimeOut { record: CheckpointRecord },
    /// Published state (`Ctx::set_event`): writes `record` (the checkpoint
    /// that makes a replay skip it) and `value` as the value of `key`
    /// (replacing one set before) in one atomic batch, and sets the count of
    /// resumes without progress back to zero.
    Publish {
        record: CheckpointRecord,
        key: String,
        value: EventRecord,
    },
    /// A stream entry (`Ctx::write_stream`): writes `record` (its
    /// checkpoint) and `value` as entry `offset` of stream `key` in one
    /// atomic batch (replacing an entry of that offset), and sets the count
    /// of resumes without progress back to zero.
    Append {
        record: CheckpointRecord,
        key: String,
        offset: u64,
        value: EventRecord,
    },
}

/// The outcome of a fenced write that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
    /// Written durably.
    Written,
    /// Not written: an awaited event is stored (see [`Write::Park`] and
    /// [`Write::TimeOut`]).
    EventFirst,
}

/// What [`Backend::send_event`] checks, under the instance's lock, before
/// it stores an event: the instance's record, the number the event gets,
/// the payload type of the stored (parked) wait the event would satisfy
/// if there is one, and whether the wait of that name before it (occurrence
/// `seq - 1`) ended by its timeout; returns the error to refuse the event
/// with.
pub(crate) type EventCheck<'a> =
    &'a (dyn Fn(&InstanceRecord, u32, Option<&str>, bool) -> Result<()> + Send + Sync);

/// What [`Backend::reopen`] asks the engine under the instance's lock:
/// `None` for nothing to do, or the new record and the checkpoints to take
/// out; an error refuses.
pub(crate) type Reopen<'a> = &'a (
        dyn Fn(
    InstanceRecord,
    Vec<CheckpointRecord>,
) -> Result<Option<(InstanceRecord, Vec<CheckpointRecord>)>>
            + Send
            + Sync
    );

/// A wake-up hint from the backend. Hints may be lost or repeated: the
/// engine's claim loop polls, so a lost hint costs at most one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// Something may be claimable now (a due timer, an arrived event, a
    /// released instance).
    Ready,
    /// Event `name` was stored for instance `id` (a running owner rings its
    /// waits).
    Event { id: String, name: String },
    /// Instance `id` was cancelled (its owner stops between steps).
    Cancelled { id: String },
    /// Instance `id` finished or was set aside (handles elsewhere re-read
    /// it; a queue's dispatch loop fills the slot it held). The embedded
    /// backend, whose every instance ends in the task that resolves its
    /// handles, sends it for a queue's instance only.
    Ended { id: String },
    /// Instance `id` was paused or unpaused (its owner looks at the record).
    Paused { id: String },
    /// Instance `id` published a value under `key`, or appended to stream
    /// `key` (readers waiting in `Engine::get_event_timeout` look again).
    Published { id: String, key: String },
}

/// A table of small store-wide records kept beside the instances, keyed
/// by name: schedules and pending debounces (the engine encodes and
/// decodes them; the backend stores bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// One record per schedule, keyed by its name.
    Schedules,
    /// One record per debounce key.
    Debounces,
}

/// What a decision of [`Backend::update_row`] does with the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing is written.
    Keep,
    /// The row becomes this value (inserted if absent).
    Put(Vec<u8>),
    /// The row is deleted.
    Delete,
}

/// Rows of a [`Table`]: (key, value), in key order.
pub(crate) type Rows = Vec<(String, Vec<u8>)>;

/// What [`Backend::update_row`] asks under the row's lock: given the row's
/// value (`None` if absent), what to do; an error refuses (nothing written).
pub(crate) type DecideRow<'a> = &'a (dyn Fn(Option<&[u8]>) -> Result<Change> + Send + Sync);

/// What [`Backend::enqueue_many`] did with one item.
#[derive(Debug)]
pub(crate) enum Queued {
    /// Written, held in its queue.
    New,
    /// An instance with that id already exists (it was not changed).
    Exists(InstanceRecord),
    /// Not written: this pending instance holds the deduplication id.
    Duplicate(String),
}

pub(crate) use crate::queue::QueueSpec;

/// One queue as [`Backend::queue_stats`] sees it.
#[derive(Debug)]
pub(crate) struct QueueStats {
    pub name: String,
    /// Its limits as stored by the last dispatch (PostgreSQL), if kept.
    pub limits: Option<QueueSpec>,
    /// Held instances (enqueued, not dispatched, unfinished).
    pub pending: u64,
    /// Dispatched and unfinished instances.
    pub running: u64,
}

/// What the engine needs from durable storage.
pub(crate) trait Backend: Send + Sync + 'static {
    // --- creating and reading instances ---

    /// Atomic create-if-absent of instance `id`, owned by the caller when new.
    fn create<'a>(
        &'a self,
        id: &'a str,
        record: &'a InstanceRecord,
    ) -> BoxFuture<'a, Result<Created>>;

    /// [`create`](Self::create) of every instance of `items` (distinct
    /// ids), the new ones in one atomic write: one fsync or one
    /// transaction for all. Answers in the order of `items`.
    fn create_many<'a>(
        &'a self,
        items: &'a [(String, InstanceRecord)],
    ) -> BoxFuture<'a, Result<Vec<Created>>>;

    /// [`create_many`](Self::create_many) for other processes to run (a
    /// pure client's starts): new instances are left unowned, answered
    /// [`Created::Unclaimed`]. By default created owned, then released.
    fn create_unclaimed<'a>(
        &'a self,
        items: &'a [(String, InstanceRecord)],
    ) -> BoxFuture<'a, Result<Vec<Created>>> {
        Box::pin(async move {
            let mut created = self.create_many(items).await?;
            for ((id, _), answer) in items.iter().zip(created.iter_mut()) {
                if let Created::New(lease) = answer {
                    if let Err(e) = self.release(id, *lease).await {
                        // Its lease runs out with this worker's, if ever.
                        tracing::warn!(durable.instance_id = %id, durable.error = %e, "could not hand a started instance to the workers at once");
                    }
                    *answer = Created::Unclaimed;
                }
            }
            Ok(created)
        })
    }

    /// [`create`](Self::create) with `checkpoints` written in the same
    /// atomic batch (a fork: the new instance replays them).
    fn create_with<'a>(
        &'a self,
        id: &'a str,
        record: &'a InstanceRecord,
        checkpoints: &'a [CheckpointRecord],
    ) -> BoxFuture<'a, Result<Created>>;

    /// The record of instance `id`, if it exists.
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<InstanceRecord>>>;

    /// What parked instance `id` waits for, if it is parked.
    fn park_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ParkRecord>>>;

    /// Every checkpoint of instance `id`, in key order.
    fn checkpoints<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<CheckpointRecord>>>;

    /// Event `name` number `seq` of instance `id`, if it was sent.
    fn event<'a>(
        &'a self,
        id: &'a str,
        name: &'a str,
        seq: u32,
    ) -> BoxFuture<'a, Result<Option<EventRecord>>>;

    /// The events stored for instance `id`: (name, fingerprint, shape).
    fn events_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<(String, u64, String)>>>;

    /// Every event stored for instance `id`: (name, number, record), in
    /// key order (feature `testing`: the kit's export).
    #[cfg(feature = "testing")]
    fn event_records<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, u32, EventRecord)>>>;

    /// One page of instances that pass `filter`, newest first.
    fn list<'a>(&'a self, filter: &'a ListFilter) -> BoxFuture<'a, Result<Page>>;

    // --- ownership ---

    /// Claims unfinished instance `id` for the caller if nobody owns it and
    /// it is not parked (a start or attach that found it, `Engine::resume`).
    /// `None` if it is owned, parked or finished.
    fn claim<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Claim>>>;

    /// Claims up to `limit` instances of the `workflows` (name, version) that are
    /// runnable now: parked with a due timer or an arrived event, or
    /// unfinished and unowned (`Running` or `Blocked` with a dead owner;
    /// never `NeedsAttention` or `Incompatible`). The first call after open
    /// is recovery.
    fn claim_due<'a>(
        &'a self,
        workflows: &'a [(&'static str, u32)],
        limit: usize,
    ) -> BoxFuture<'a, Result<Round>>;

    /// When the next parked timer this process knows of is due (ms since
    /// the epoch on the engine's clock), to sleep until then.
    fn next_due(&self) -> Option<u64>;

    /// A fenced write of instance `id`'s owner.
    fn commit<'a>(
        &'a self,
        id: &'a str,
        lease: Lease,
        write: Write,
    ) -> BoxFuture<'a, Result<Committed>>;

    /// Lets go of instance `id` without writing (its owner stopped: shutdown,
    /// a refused write). Another claim may take it.
    fn release<'a>(&'a self, id: &'a str, lease: Lease) -> BoxFuture<'a, Result<()>>;

    /// Before a step body starts: `None` when this process surely still
    /// holds `lease` (always, on one process); else a wait that ends `Ok`
    /// once it surely does again, or with
    /// [`InstanceError::LeaseLost`](crate::InstanceError::LeaseLost) once it
    /// surely does not (a worker frozen past its lease wakes up to find
    /// its instances taken over: it starts no body of theirs).
    fn hold<'a>(&'a self, id: &'a str, lease: Lease) -> Option<BoxFuture<'a, Result<()>>> {
        let _ = (id, lease);
        None
    }

    /// The unfinished instances this process's worker owns now, with their
    /// leases, on a shared store (none on one process, where every lease is
    /// this process's and a task stops only by letting go). The engine lets
    /// go of those no task of it drives: the answer to their claim or
    /// create was lost (a connection that broke after COMMIT), and nobody
    /// else would ever claim them while this worker lives.
    fn owned(&self) -> BoxFuture<'_, Result<Vec<(String, Lease)>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    // --- decisions about an instance, from any process ---

    /// Stores `event` as the next event `name` of instance `id`, numbered
    /// after every event of that name and every wait of that name that
    /// ended, after `check` passed under the instance's lock; wakes the
    /// instance if it is parked on it. Returns the event's number.
    /// `NotFound` and `InstanceFinished` are the backend's errors.
    fn send_event<'a>(
        &'a self,
        id: &'a str,
        name: &'a str,
        event: EventRecord,
        check: EventCheck<'a>,
    ) -> BoxFuture<'a, Result<u32>>;

    /// [`send_event`](Self::send_event) with an idempotency key: decided
    /// under the instance's lock, like it, after a look-up of `key` among
    /// the keys of instance `id`'s events. If an event was stored with
    /// `key` before, nothing is checked or written and the result is
    /// `None`; else the event is checked and stored as `send_event` does,
    /// with `key` recorded in the same atomic write, and the result is its
    /// number. `NotFound` comes first; `InstanceFinished` only for a key
    /// not seen before (a retried send of a delivered event is a no-op even
    /// after the instance finished).
    fn send_event_keyed<'a>(
        &'a self,
        id: &'a str,
        name: &'a str,
        event: EventRecord,
        check: EventCheck<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>>>;

    /// The value instance `id` published under `key` (see
    /// [`Write::Publish`]), if any. `NotFound` when the instance does not
    /// exist.
    fn published<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<EventRecord>>>;

    /// Up to `limit` entries of stream `key` of instance `id` from offset
    /// `from` on, in offset order: (offset, value). `NotFound` when the
    /// instance does not exist.
    fn stream<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(u64, EventRecord)>>>;

    /// Cancels unfinished instance `id`: records `record` (its state set to
    /// `Cancelled` by the caller from the latest record, passed in through
    /// `update`) and moves its epoch, so its owner's later writes are
    /// refused. `NotFound` and `InstanceFinished` are the backend's errors.
    fn cancel<'a>(
        &'a self,
        id: &'a str,
        update: &'a (dyn Fn(InstanceRecord) -> InstanceRecord + Send + Sync),
    ) -> BoxFuture<'a, Result<()>>;

    /// Sets stopped instance `id` going again by hand (`Engine::retry`,
    /// `Engine::resume` of a cancelled one). Under the instance's lock (the
    /// one `send_event` and `cancel` take), `decide` gets its record and
    /// checkpoints and returns `None` (nothing to do: the write is skipped)
    /// or the new record (state `Running`, with the transition saying what
    /// was done) and the checkpoints to take out (by name and occurrence or
    /// key; the caller kept what it needs of them in the transition). One
    /// atomic batch writes the record, deletes those checkpoints and puts
    /// the instance among the unfinished with no resumes without progress.
    /// The epoch moves (a late owner's writes are refused); the instance is
    /// left unowned and runnable, so the next claim round takes it (a
    /// `Ready` hint). Returns whether it wrote. `NotFound` is the backend's
    /// error; `decide` refuses with its own.
    fn reopen<'a>(&'a self, id: &'a str, decide: Reopen<'a>) -> BoxFuture<'a, Result<bool>>;

    /// Pauses (`paused`) or unpauses unfinished instance `id`: under the
    /// instance's lock, `update` gets its record and returns it with the
    /// transition saying so, or `None` when it already is as asked (nothing
    /// is written). The record is written durably; the epoch does not move
    /// (an owner finishes the step it runs, and starts no other while
    /// paused: the engine's `Paused` hint tells it). While paused, no claim
    /// takes the instance: a parked one stays parked whatever its timer or
    /// events; after an unpause, one that came due meanwhile (or that was
    /// not parked) is claimable at once. Returns whether it wrote.
    /// `NotFound` and `InstanceFinished` are the backend's errors.
    fn set_paused<'a>(
        &'a self,
        id: &'a str,
        paused: bool,
        update: &'a (dyn Fn(InstanceRecord) -> Option<InstanceRecord> + Send + Sync),
    ) -> BoxFuture<'a, Result<bool>>;

    // --- queues (see `queues.rs`) ---

    /// Creates each instance of `items` (distinct ids; each record carries
    /// its `Enqueued` transition) held in its queue: no claim takes it
    /// until [`dispatch`](Self::dispatch) does. New ones in one atomic
    /// write. Decided under the queue's lock: an item whose deduplication
    /// id is held by a pending instance of its queue (enqueued, not
    /// finished) is not written. Answers in the order of `items`.
    fn enqueue_many<'a>(
        &'a self,
        items: &'a [(String, InstanceRecord)],
    ) -> BoxFuture<'a, Result<Vec<Queued>>>;

    /// Under queue `spec.name`'s lock (across processes), takes up to
    /// `room` of its held instances of the `workflows` (names; the caller
    /// runs them) whose `not_before` passed, lowest
    /// priority first and then in enqueue order, as far as the queue's
    /// concurrency limit (dispatched and unfinished instances, per
    /// partition for the partition limit) and rate limit (dispatches in
    /// the last period) allow; records their `Dispatched` transition and
    /// claims them for the caller, in one atomic write.
    fn dispatch<'a>(
        &'a self,
        spec: &'a QueueSpec,
        workflows: &'a [(&'static str, u32)],
        room: usize,
    ) -> BoxFuture<'a, Result<Vec<Claim>>>;

    /// Every queue the store knows of (by its unfinished instances, or
    /// by a dispatch), with its counts and, where the store keeps them,
    /// its limits.
    fn queue_stats(&self) -> BoxFuture<'_, Result<Vec<QueueStats>>>;

    // --- store-wide ---

    /// Deletes every finished instance (completed, failed, cancelled) whose
    /// last transition is before `before_ms`: its record, checkpoints,
    /// events, published state, streams, keys of idempotent sends, park
    /// record and index entries, one instance per atomic batch,
    /// each decided under the instance's lock (one reopened meanwhile is
    /// kept). Unfinished instances are never touched. Returns how many were
    /// deleted.
    fn purge(&self, before_ms: u64) -> BoxFuture<'_, Result<u64>>;

    /// The ids of every unfinished instance (the deploy gate checks them).
    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// Parked instances this process holds in its timer index (feature
    /// `hooks`: the benchmark's memory figure).
    #[cfg(feature = "hooks")]
    fn parked_count(&self) -> usize {
        0
    }

    /// Batches and group commits written so far (feature `hooks`).
    #[cfg(feature = "hooks")]
    fn commit_stats(&self) -> (u64, u64) {
        (0, 0)
    }

    /// The manifest stored under `hash`, if any.
    fn manifest(&self, hash: u64) -> BoxFuture<'_, Result<Option<Manifest>>>;

    /// Stores each of `manifests` not stored yet.
    fn store_manifests<'a>(&'a self, manifests: &'a [&'a Manifest]) -> BoxFuture<'a, Result<()>>;

    /// Every row of `table`: (key, value), in key order.
    fn rows(&self, table: Table) -> BoxFuture<'_, Result<Rows>>;

    /// Reads row `key` of `table`, lets `decide` say what becomes of it,
    /// and writes that durably, all under a lock on the key that every
    /// process of the store respects (a read-modify-write: two processes
    /// never both decide on the same old value). Returns the row's value
    /// afterwards (`None` if absent).
    fn update_row<'a>(
        &'a self,
        table: Table,
        key: &'a str,
        decide: DecideRow<'a>,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;

    /// Whether other processes share this storage (and may run what this
    /// process does not register): a pure client's starts are left to them.
    fn shared(&self) -> bool {
        false
    }

    /// Wake-up hints (see [`Notice`]).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notice>;

    /// The first fatal error of the store, after which nothing is written.
    fn failure(&self) -> Option<crate::error::StoreError>;

    /// Writes everything queued, then stops writing.
    fn close(&self) -> BoxFuture<'_, ()>;
}
