//! The PostgreSQL backend: many worker processes on one schema.
//!
//! - Instances are rows with the engine's records as `bytea` (the codec's
//!   versioned envelope) and the columns that claims and listings need
//!   (`status`, `epoch`, `owner`, `wake_at_ms`, `created_at_ms`, ...).
//! - Ownership is a claim (`FOR UPDATE SKIP LOCKED`) that moves the
//!   instance's epoch; every write of the owner is fenced by that epoch and
//!   by the owner column, and is refused once either moved.
//! - Each process is one `workers` row whose lease it renews on the
//!   database's clock; any worker reaps expired workers and releases their
//!   instances in the same statement.
//! - Concurrent writes of this process go to the database as one
//!   transaction (group commit, `commit.rs`).
//! - LISTEN/NOTIFY carries hints only; a poll tick makes everything
//!   correct without it (`notify.rs`).
//!
//! Failover after a worker is killed: its lease runs out (at most `lease`
//! after its last renewal), a reaper of another worker notices within
//! `grace` + `lease`/2, and the instances are claimable at once; the
//! other workers claim them at their next poll or on the hint.

mod batch;
mod batches;
mod claims;
mod commit;
mod creates;
mod decide;
mod group;
mod notify;
mod operator;
mod published;
mod queues;
mod reads;
mod rows;
mod schema;
mod status;
mod workers;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::broadcast;
use tokio_postgres::NoTls;

use crate::backend::{
    Backend, BoxFuture, Claim, Committed, Created, EventCheck, Lease, Notice, Reopen, Round, Write,
};
use crate::error::{Error, Result, StoreError};
use crate::listing::{ListFilter, Page};
use crate::manifest::Manifest;
use crate::records::{CheckpointRecord, EventRecord, InstanceRecord, ParkRecord};
use crate::time::Clock;

/// Statement parameters, as tokio-postgres takes them.
type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Queries by text, each statement prepared once per connection (the
/// pool's statement cache): a hot statement costs one round trip instead
/// of a parse and then an execute. For statement texts from a bounded set
/// only (the schema's name and constants, never values).
trait Cached {
    fn query_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> BoxFuture<'a, std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>>;
    fn query_one_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> BoxFuture<'a, std::result::Result<tokio_postgres::Row, tokio_postgres::Error>>;
    fn query_opt_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> BoxFuture<'a, std::result::Result<Option<tokio_postgres::Row>, tokio_postgres::Error>>;
    fn execute_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> BoxFuture<'a, std::result::Result<u64, tokio_postgres::Error>>;
}

impl<C: deadpool_postgres::GenericClient + Sync> Cached for C {
    fn query_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> BoxFuture<'a, std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> {
        Box::pin(async move { self.query(&self.prepare_cached(sql).await?, params).await })
    }

    fn query_one_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> BoxFuture<'a, std::result::Result<tokio_postgres::Row, tokio_postgres::Error>> {
        Box::pin(async move {
            self.query_one(&self.prepare_cached(sql).await?, params)
                .await
        })
    }

    fn query_opt_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> BoxFuture<'a, std::result::Result<Option<tokio_postgres::Row>, tokio_postgres::Error>>
    {
        Box::pin(async move {
            self.query_opt(&self.prepare_cached(sql).await?, params)
                .await
        })
    }

    fn execute_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> BoxFuture<'a, std::result::Result<u64, tokio_postgres::Error>> {
        Box::pin(async move { self.execute(&self.prepare_cached(sql).await?, params).await })
    }
}

/// How long the row of a gone worker is kept by default (for whoever
/// looks at the `workers` table after an incident).
pub(crate) const WORKER_RETENTION: Duration = Duration::from_secs(3600);

/// How a [`PgBackend`] runs.
#[derive(Debug, Clone)]
pub(crate) struct PgOptions {
    /// How long a worker's lease lasts without renewal (renewed every
    /// third of it). A worker silent for longer is taken over.
    pub lease: Duration,
    /// How often to look for claimable instances without a listener that
    /// proved it receives notifications.
    pub poll: Duration,
    /// How often to look with a proven listener (notifications do the rest).
    pub poll_listening: Duration,
    /// Most pooled connections (the listener has its own).
    pub pool_size: usize,
    /// Whether to LISTEN for hints of other processes.
    pub listen: bool,
    /// How long the row of a worker that is gone (closed, or declared
    /// dead) is kept past its lease, once it holds no instance.
    pub worker_retention: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            lease: Duration::from_secs(15),
            poll: Duration::from_millis(250),
            poll_listening: Duration::from_secs(5),
            pool_size: 8,
            listen: true,
            worker_retention: WORKER_RETENTION,
        }
    }
}

impl PgOptions {
    /// How long after its lease ran out a worker is declared dead.
    pub(crate) fn grace(&self) -> Duration {
        self.lease / 5
    }
}

/// The backend over one schema of a PostgreSQL database.
pub(crate) struct PgBackend {
    inner: Arc<Inner>,
}

/// What the backend's calls and tasks share.
pub(crate) struct Inner {
    pool: Pool,
    config: tokio_postgres::Config,
    schema: String,
    /// The schema, quoted for SQL.
    quoted: String,
    options: PgOptions,
    clock: Arc<dyn Clock>,
    /// This process's worker id (a fresh one after it was declared dead).
    me: AtomicI64,
    /// When the last renewal of this worker's lease that succeeded was
    /// sent (on this process's monotonic clock): the lease surely holds
    /// until then plus one lease (the database counts from later).
    renewed: Mutex<std::time::Instant>,
    /// Tells this process's own notifications from others'.
    token: u64,
    notices: broadcast::Sender<Notice>,
    hints: notify::Hints,
    committer: commit::Committer,
    creator: creates::Creator,
    timers: Mutex<claims::Timers>,
    /// Ids whose record this build cannot read: left to other workers.
    unreadable: Mutex<Vec<String>>,
    /// Hashes of the manifests this process stored (or found stored): a
    /// manifest is never changed or removed, so a pure client's starts
    /// store each once, not at every start.
    manifests_stored: Mutex<std::collections::HashSet<u64>>,
    failure: Mutex<Option<StoreError>>,
    /// Whether the listener proved it receives notifications.
    listening: AtomicBool,
    /// The listener connection's server process id (0 when not connected).
    listener_pid: std::sync::atomic::AtomicI32,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    #[cfg(test)]
    heartbeat_paused: AtomicBool,
}

impl PgBackend {
    /// Connects to `url`, creates or migrates `schema`, registers this
    /// process as a worker and starts its tasks (heartbeat, reaper,
    /// committer, notifier, listener, poll tick). Deadlines of timers are
    /// read on `clock`.
    pub(crate) async fn connect(
        url: &str,
        schema: &str,
        options: PgOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<PgBackend> {
        let quoted = schema::quoted(schema)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Store(StoreError::io("parse the PostgreSQL URL", e)))?;
        if config.get_application_name().is_none() {
            config.application_name("durable");
        }
        config.connect_timeout(Duration::from_secs(10));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Store(StoreError::io("build the connection pool", e)))?;
        schema::migrate(&pool, schema, &quoted).await?;
        let registering = std::time::Instant::now();
        let me = workers::register(&pool, &quoted, options.lease).await?;
        let (notices, _) = broadcast::channel(1024);
        let (stop, _) = tokio::sync::watch::channel(false);
        let (hints, hint_rx) = notify::Hints::new();
        let (committer, commit_rx) = commit::Committer::new();
        let (creator, create_rx) = creates::Creator::new();
        let inner = Arc::new(Inner {
            pool,
            config,
            schema: schema.to_string(),
            quoted,
            options,
            clock,
            me: AtomicI64::new(me),
            renewed: Mutex::new(registering),
            token: notify::random_u64(),
            notices,
            hints,
            committer,
            creator,
            timers: Mutex::new(claims::Timers::default()),
            unreadable: Mutex::new(Vec::new()),
            manifests_stored: Mutex::new(std::collections::HashSet::new()),
            failure: Mutex::new(None),
            listening: AtomicBool::new(false),
            listener_pid: std::sync::atomic::AtomicI32::new(0),
            stop,
            tasks: Mutex::new(Vec::new()),
            #[cfg(test)]
            heartbeat_paused: AtomicBool::new(false),
        });
        let mut tasks = vec![
            tokio::spawn(commit::run(Arc::clone(&inner), commit_rx)),
            tokio::spawn(creates::run(Arc::clone(&inner), create_rx)),
            tokio::spawn(notify::notifier(Arc::clone(&inner), hint_rx)),
            tokio::spawn(workers::heartbeat(Arc::clone(&inner))),
            tokio::spawn(workers::reaper(Arc::clone(&inner))),
            tokio::spawn(notify::poll_tick(Arc::clone(&inner))),
        ];
        if inner.options.listen {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(notify::listener(Arc::clone(&inner), ready_tx)));
            // Wait for the self-test, so that the poll interval is known.
            let _ = ready_rx.await;
        }
        *inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(PgBackend { inner })
    }

    #[cfg(test)]
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Inner {
    /// `template` with `{s}` replaced by the quoted schema.
    fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.quoted)
    }

    /// This process's worker id now.
    fn me(&self) -> i64 {
        self.me.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this worker's lease surely still holds: renewed less than a
    /// lease ago, counted from when the renewal was sent.
    fn lease_current(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < self.options.lease
    }

    /// See [`Backend::hold`]: `None` while `lease` is this worker's and
    /// its lease is current; else waits for a renewal (`Ok`) or for the
    /// news that the worker was declared dead and goes on under a new id
    /// (`LeaseLost`: every lease of the old id is gone).
    fn hold<'a>(&'a self, id: &'a str, lease: Lease) -> Option<BoxFuture<'a, Result<()>>> {
        if lease.owner == self.me() && self.lease_current() {
            return None;
        }
        Some(Box::pin(async move {
            tracing::warn!(durable.instance_id = %id, "this worker's lease is not surely current; the next step waits for its renewal");
            loop {
                if lease.owner != self.me() {
                    return Err(Error::Instance(crate::error::InstanceError::LeaseLost {
                        instance: id.to_string(),
                        epoch: lease.epoch,
                    }));
                }
                if self.lease_current() {
                    return Ok(());
                }
                if self.stopped() {
                    return Err(Error::Store(StoreError::Closed));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }))
    }

    /// What every transaction of this worker begins with (the group
    /// commit's: [`group_tx_settings`](Self::group_tx_settings)), `SET
    /// LOCAL` (so it also works behind a transaction-mode pooler):
    /// - how long it may sit idle (its process frozen between two
    ///   statements): one lease; the server then ends the session and its
    ///   row locks go, so that a frozen worker never keeps the reaper and
    ///   the others from the instances it held;
    /// - a plan for each statement at each run. Statements are prepared
    ///   once per connection, and PostgreSQL would otherwise switch one to
    ///   a generic plan after five runs, made with the statistics of that
    ///   moment and kept: on a schema created empty, a statement joining
    ///   an array of ids with `instances` then kept scanning the whole
    ///   table as it grew, until an `ANALYZE`.
    fn tx_settings(&self) -> String {
        format!(
            "{}; SET LOCAL plan_cache_mode = force_custom_plan",
            self.idle_setting()
        )
    }

    /// What the transactions of a group commit and of a claim round begin
    /// with: one lease of idle time, as every transaction (see
    /// [`tx_settings`](Self::tx_settings)), and their statements' plans
    /// made once per connection and kept. Each of them finds its rows by
    /// key (arrays of ids or keys, joined with the primary keys) or through
    /// partial indexes, so with sequential scans ruled out the plan that a
    /// schema created empty makes first is the plan for any size (a test
    /// checks that none reads a table whole). A plan at each run cost about
    /// a fifth of the server's time per group, and more than the claim
    /// itself.
    fn group_tx_settings(&self) -> String {
        format!(
            "{}; SET LOCAL enable_seqscan = off; \
             SET LOCAL plan_cache_mode = force_generic_plan",
            self.idle_setting()
        )
    }

    /// How long a transaction of this worker may sit idle: one lease.
    fn idle_setting(&self) -> String {
        format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            self.options.lease.as_millis().max(1)
        )
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Tells this process's subscribers, and the others' through NOTIFY.
    fn announce(&self, notice: Notice) {
        let _ = self.notices.send(notice.clone());
        self.hints.send(notice);
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Maps a database error to [`StoreError::Io`] for `op`.
pub(super) fn io(op: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| {
        let reason = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        Error::Store(StoreError::Io {
            op,
            reason,
            source: Some(crate::error::Cause::new(e)),
        })
    }
}

/// Maps a pool error to [`StoreError::Io`].
pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    Error::Store(StoreError::io("get a PostgreSQL connection", e))
}

/// Encodes a record for a column.
pub(super) fn encode<T: serde::Serialize>(value: &T, id: &str, what: &str) -> Result<Vec<u8>> {
    crate::codec::encode(value).map_err(|reason| {
        Error::Replay(crate::error::ReplayError::Encode {
            instance: id.to_string(),
            what: what.to_string(),
            reason,
        })
    })
}

/// Decodes a record read from a column.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T> {
    crate::codec::decode(bytes).map_err(|e| Error::Store(StoreError::decode(what(), e)))
}

impl Backend for PgBackend {
    fn create<'a>(
        &'a self,
        id: &'a str,
        record: &'a InstanceRecord,
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(self.inner.create(id, record))
    }

    fn create_many<'a>(
        &'a self,
        items: &'a [(String, InstanceRecord)],
    ) -> BoxFuture<'a, Result<Vec<Created>>> {
        Box::pin(self.inner.create_many(items))
    }

    fn create_unclaimed<'a>(
        &'a self,
        items: &'a [(String, InstanceRecord)],
    ) -> BoxFuture<'a, Result<Vec<Created>>> {
        Box::pin(async move {
            let created = self.inner.insert_many(items, false).await?;
            // The workers learn of them now rather than at their next poll.
            if created.iter().any(|c| matches!(c, Created::Unclaimed)) {
                self.inner.hints.send(Notice::Ready);
            }
            Ok(created)
        })
    }

    fn owned(&self) -> BoxFuture<'_, Result<Vec<(String, Lease)>>> {
        Box::pin(self.inner.owned())
    }

    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<InstanceRecord>>> {
        Box::pin(self.inner.load(id))
    }

    fn park_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ParkRecord>>> {
        Box::pin(self.inner.park_of(id))
    }

    fn checkpoints<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<CheckpointRecord>>> {
        Box::pin(self.inner.checkpoints(id))
    }

    fn event<'a>(
        &'a self,
        id: &'a str,
        name: &'a str,
        seq: u32,
    ) -> BoxFuture<'a, Result<Option<EventRecord>>> {
        Box::pin(self.inner.event(id, name, seq))
    }

    fn events_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<(String, u64, String)>>> {
        Box::pin(self.inner.events_of(id))
    }

    #[cfg(feature = "testing")]
    fn event_records<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, u32, EventRecord)>>> {
        Box::pin(self.inner.event_records(id))
    }

    fn list<'a>(&'a self, filter: &'a ListFilter) -> BoxFuture<'a, Result<Page>> {
        Box::pin(self.inner.list(filter))
    }

    fn enqueue_many<'a>(
        &'a self,
        items: &'a [(String, InstanceRecord)],
    ) -> BoxFuture<'a, Result<Vec<crate::backend::Queued>>> {
        Box::pin(self.inner.enqueue_many(items))
    }

    fn dispatch<'a>(
        &'a self,
        spec: &'a crate::backend::QueueSpec,
        workflows: &'a [(&'static str, u32)],
        room: usize,
    ) -> BoxFuture<'a, Result<Vec<Claim>>> {
        Box::pin(self.inner.dispatch(spec, workflows, room))
    }

    fn queue_stats(&self) -> BoxFuture<'_, Result<Vec<crate::backend::QueueStats>>> {
        Box::pin(self.inner.queue_stats())
    }

    fn claim<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Claim>>> {
        Box::pin(self.inner.claim(id))
    }

    fn claim_due<'a>(
        &'a self,
        workflows: &'a [(&'static str, u32)],
        limit: usize,
    ) -> BoxFuture<'a, Result<Round>> {
        Box::pin(self.inner.claim_due(workflows, limit))
    }

    fn next_due(&self) -> Option<u64> {
        self.inner.next_due()
    }

    fn create_with<'a>(
        &'a self,
        id: &'a str,
        record: &'a InstanceRecord,
        checkpoints: &'a [CheckpointRecord],
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(self.inner.create_with(id, record, checkpoints))
    }

    fn rows(&self, table: super::Table) -> BoxFuture<'_, Result<super::Rows>> {
        Box::pin(self.inner.rows(table))
    }

    fn update_row<'a>(
        &'a self,
        table: super::Table,
        key: &'a str,
        decide: super::DecideRow<'a>,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(self.inner.update_row(table, key, decide))
    }

    fn reopen<'a>(&'a self, id: &'a str, decide: Reopen<'a>) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.inner.reopen(id, decide))
    }

    fn set_paused<'a>(
        &'a self,
        id: &'a str,
        paused: bool,
        update: &'a (dyn Fn(InstanceRecord) -> Option<InstanceRecord> + Send + Sync),
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.inner.set_paused(id, paused, update))
    }

    fn purge(&self, before_ms: u64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.inner.purge(before_ms))
    }

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(self.inner.unfinished())
    }

    fn commit<'a>(
        &'a self,
        id: &'a str,
        lease: Lease,
        write: Write,
    ) -> BoxFuture<'a, Result<Committed>> {
        Box::pin(self.inner.commit(id, lease, write))
    }

    fn release<'a>(&'a self, id: &'a str, lease: Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.release(id, lease))
    }

    fn hold<'a>(&'a self, id: &'a str, lease: Lease) -> Option<BoxFuture<'a, Result<()>>> {
        self.inner.hold(id, lease)
    }

    fn shared(&self) -> bool {
        true
    }

    fn send_event<'a>(
        &'a self,
        id: &'a str,
        name: &'a str,
        event: EventRecord,
        check: EventCheck<'a>,
    ) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let seq = self.inner.send_event(id, name, event, check, None).await?;
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
        Box::pin(self.inner.send_event(id, name, event, check, Some(key)))
    }

    fn published<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<EventRecord>>> {
        Box::pin(self.inner.published(id, key))
    }

    fn stream<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(u64, EventRecord)>>> {
        Box::pin(self.inner.stream(id, key, from, limit))
    }

    fn cancel<'a>(
        &'a self,
        id: &'a str,
        update: &'a (dyn Fn(InstanceRecord) -> InstanceRecord + Send + Sync),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.cancel(id, update))
    }

    fn manifest(&self, hash: u64) -> BoxFuture<'_, Result<Option<Manifest>>> {
        Box::pin(self.inner.manifest(hash))
    }

    fn store_manifests<'a>(&'a self, manifests: &'a [&'a Manifest]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.store_manifests(manifests))
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    fn failure(&self) -> Option<StoreError> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(workers::close(Arc::clone(&self.inner)))
    }
}
