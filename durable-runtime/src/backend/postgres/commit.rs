//! Group commit: the fenced writes of this process's instances, gathered
//! while a group is being written, go to PostgreSQL as one transaction of
//! a few array-bound statements, each write with its own outcome (a write
//! whose fence fails is refused alone).
//!
//! One transaction: lock the rows of the group's instances (sorted by id,
//! so two groups never wait on each other in opposite orders) and read
//! their epoch and owner; decide each write in order; look up the events
//! that parks and timeouts depend on (under the row locks, which
//! `send_event` takes too); upsert the checkpoints; update the instance
//! rows; commit. A write is reported durable only after its COMMIT
//! succeeded, or, when the connection dropped during COMMIT, after
//! `txid_status` said the transaction committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::backend::{Committed, Lease, Notice, Write};
use crate::error::{Error, InstanceError, Result, StoreError};
use crate::records::{CheckpointRecord, CheckpointState, InstanceState, keyed_key, occurrence_key};

use super::{Inner, encode, io, status};

/// Most writes in one transaction.
const MAX_GROUP: usize = 1024;
/// Groups written at once, each on its own connection.
const GROUPS_IN_FLIGHT: usize = 2;
/// Attempts at a group whose transaction surely did not commit.
const ATTEMPTS: u32 = 6;

/// One write, encoded, waiting for its group.
pub(super) struct Job {
    id: String,
    epoch: i64,
    write: Prepared,
    reply: oneshot::Sender<Result<Committed>>,
}

/// A write, encoded for the statements.
enum Prepared {
    Checkpoint(Cp, bool),
    Record {
        bytes: Vec<u8>,
        status: i16,
        /// `None`: finished.
        active: Option<u32>,
        blocked: bool,
        updated_ms: i64,
    },
    Park {
        bytes: Vec<u8>,
        status: i16,
        wake_at: Option<u64>,
        awaited: Vec<(String, i32)>,
    },
    TimeOut(Cp),
}

/// A checkpoint row.
#[derive(Clone)]
struct Cp {
    key: Vec<u8>,
    name: String,
    ended_wait: bool,
    bytes: Vec<u8>,
}

impl Cp {
    fn of(id: &str, record: &CheckpointRecord) -> Result<Cp> {
        let key = match &record.key {
            Some((key, _)) => keyed_key(id, &record.name, key),
            None => occurrence_key(id, &record.name, record.occurrence),
        };
        Ok(Cp {
            key,
            name: record.name.clone(),
            ended_wait: matches!(
                record.state,
                CheckpointState::Received { .. } | CheckpointState::TimedOut { .. }
            ),
            bytes: encode(record, id, "a checkpoint record")?,
        })
    }
}

/// Counters of the committer's work.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    /// Writes handed to the committer.
    pub sent: AtomicU64,
    /// Writes answered.
    pub writes: AtomicU64,
    /// Transactions (groups) written.
    pub groups: AtomicU64,
}

/// The sending side of the committer task.
pub(super) struct Committer {
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<Job>>>,
    done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    done_tx: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    pub(super) stats: CommitStats,
    /// Held by a test to let writes gather into one group.
    #[cfg(test)]
    pub(super) hold: tokio::sync::Mutex<()>,
    /// Faults a test injects into the next attempts, one per attempt.
    #[cfg(test)]
    pub(super) faults: std::sync::Mutex<std::collections::VecDeque<Fault>>,
}

/// A fault injected into one attempt at a group.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// The server ends the connection before COMMIT.
    KillBeforeCommit,
    /// A serialization failure before COMMIT.
    Serialization,
    /// COMMIT succeeds but its answer is lost with the connection.
    LoseCommitAck,
}

impl Committer {
    pub(super) fn new() -> (Committer, mpsc::UnboundedReceiver<Job>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        (
            Committer {
                tx: std::sync::Mutex::new(Some(tx)),
                done: tokio::sync::Mutex::new(Some(done)),
                done_tx: std::sync::Mutex::new(Some(done_tx)),
                stats: CommitStats::default(),
                #[cfg(test)]
                hold: tokio::sync::Mutex::new(()),
                #[cfg(test)]
                faults: Default::default(),
            },
            rx,
        )
    }

    /// Stops taking writes and waits until every queued one is answered.
    pub(super) async fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(done) = self.done.lock().await.take() {
            let _ = done.await;
        }
    }
}

/// The change a group makes to one instance row.
#[derive(Default)]
struct Change {
    record: Option<Vec<u8>>,
    status: Option<i16>,
    release: bool,
    blocked: bool,
    recoveries: Option<i32>,
    /// 0 keep, 1 set, 2 clear.
    park_op: i16,
    park: Option<Vec<u8>>,
    wake_at: Option<i64>,
    finished: bool,
    updated_ms: Option<i64>,
}

impl Inner {
    pub(super) async fn commit(&self, id: &str, lease: Lease, write: Write) -> Result<Committed> {
        let prepared = match write {
            Write::Checkpoint { record, progress } => {
                Prepared::Checkpoint(Cp::of(id, &record)?, progress)
            }
            Write::Record { record, active } => Prepared::Record {
                bytes: encode(&record, id, "the instance record")?,
                status: status::of_state(&record.state),
                active,
                blocked: matches!(record.state, InstanceState::Blocked { .. }),
                updated_ms: status::updated_ms(&record),
            },
            Write::Park(park) => Prepared::Park {
                bytes: encode(&park, id, "a park record")?,
                status: status::of_park(&park),
                wake_at: status::wake_at(&park),
                awaited: park
                    .conds
                    .iter()
                    .filter(|c| c.event_type.is_some())
                    .map(|c| (c.name.clone(), c.occurrence as i32))
                    .collect(),
            },
            Write::TimeOut { record } => Prepared::TimeOut(Cp::of(id, &record)?),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id: id.to_string(),
            epoch: lease.epoch as i64,
            write: prepared,
            reply,
        };
        let sent = match &*self.committer.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(Error::Store(StoreError::Closed));
        }
        self.committer.stats.sent.fetch_add(1, Ordering::Relaxed);
        answer
            .await
            .unwrap_or(Err(Error::Store(StoreError::Closed)))
    }
}

/// The committer task: takes what is queued, writes it as one group,
/// answers, again, until the backend closes.
pub(super) async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    // Two groups may be in flight on two connections: while one waits for
    // its COMMIT to be flushed, the next one gathers and goes out (the
    // server flushes overlapping commits together). Both lock their rows
    // in id order, so they never deadlock each other.
    let slots = Arc::new(tokio::sync::Semaphore::new(GROUPS_IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let Some(job) = rx.recv().await else {
            break;
        };
        let mut group = vec![job];
        #[cfg(test)]
        drop(inner.committer.hold.lock().await);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let results = write_group(&inner, &group).await;
            let stats = &inner.committer.stats;
            stats.groups.fetch_add(1, Ordering::Relaxed);
            stats
                .writes
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            for (job, result) in group.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
            drop(slot);
        });
    }
    // Every group answered before the committer says it is done.
    let _ = slots.acquire_many(GROUPS_IN_FLIGHT as u32).await;
    if let Some(done) = inner
        .committer
        .done_tx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        let _ = done.send(());
    }
}

/// How one attempt at a group ended.
enum Attempt {
    Done(
        Vec<Result<Committed>>,
        Vec<Notice>,
        Vec<(String, Option<u64>)>,
    ),
    /// Surely not committed; worth another try.
    Retry(Error),
    /// Not committed, or unknown: answer with this error.
    Fail(Error),
}

async fn write_group(inner: &Inner, jobs: &[Job]) -> Vec<Result<Committed>> {
    let mut backoff = Duration::from_millis(20);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match attempt(inner, jobs).await {
            Attempt::Done(results, notices, parked) => {
                {
                    let mut timers = inner.timers.lock().unwrap_or_else(|e| e.into_inner());
                    for (id, at) in parked {
                        match at {
                            Some(at) => timers.insert(&id, at),
                            None => timers.remove(&id),
                        }
                    }
                }
                for notice in notices {
                    inner.announce(notice);
                }
                return results;
            }
            Attempt::Retry(e) => {
                tracing::debug!(durable.error = %e, "group commit retried");
                last = Some(e);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Attempt::Fail(e) => {
                last = Some(e);
                break;
            }
        }
    }
    let error = last.unwrap_or(Error::Store(StoreError::Closed));
    tracing::warn!(durable.error = %error, durable.writes = jobs.len(), "group commit failed; its writes are not durable");
    jobs.iter().map(|_| Err(error.clone())).collect()
}

/// Whether a database error leaves a transaction worth retrying.
fn retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let code = code.code();
            code == "40001" || code == "40P01" || code.starts_with("08") || code == "57P01"
        }
        // No server answer: the connection broke before the transaction
        // could commit (callers check COMMIT separately).
        None => true,
    }
}

async fn attempt(inner: &Inner, jobs: &[Job]) -> Attempt {
    let conn = match inner.conn().await {
        Ok(conn) => conn,
        Err(e) => return Attempt::Retry(e),
    };
    let me = inner.me();
    let mut txid: Option<i64> = None;
    #[cfg(test)]
    let fault = inner
        .committer
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front();
    #[cfg(not(test))]
    let fault: Option<()> = None;
    if let ([job], None) = (jobs, fault)
        && let Prepared::Checkpoint(cp, progress) = &job.write
    {
        return lone_checkpoint(inner, &conn, job, cp, *progress, me).await;
    }
    let body = async {
        let decided = decide_and_write(inner, &conn, jobs, me, &mut txid).await?;
        #[cfg(test)]
        match fault {
            Some(Fault::KillBeforeCommit) => {
                conn.batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
                    .await?;
            }
            Some(Fault::Serialization) => {
                conn.batch_execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
                )
                .await?;
            }
            _ => {}
        }
        Ok(decided)
    }
    .await;
    let decided = match body {
        Ok(decided) => decided,
        Err(e) => {
            let retry = retryable(&e);
            let _ = deadpool_postgres::Object::take(conn);
            let e = io("write a group of checkpoints")(e);
            return if retry {
                Attempt::Retry(e)
            } else {
                Attempt::Fail(e)
            };
        }
    };
    let committed = conn.batch_execute("COMMIT").await;
    #[cfg(test)]
    if committed.is_ok() && matches!(fault, Some(Fault::LoseCommitAck)) {
        let _ = deadpool_postgres::Object::take(conn);
        return match resolve(inner, txid).await {
            Some(true) => Attempt::Done(decided.0, decided.1, decided.2),
            Some(false) => Attempt::Retry(io("commit")(injected_error())),
            None => Attempt::Fail(io("commit")(injected_error())),
        };
    }
    match committed {
        Ok(()) => Attempt::Done(decided.0, decided.1, decided.2),
        Err(e) if e.as_db_error().is_some() => {
            let retry = retryable(&e);
            let _ = deadpool_postgres::Object::take(conn);
            let e = io("commit a group of checkpoints")(e);
            if retry {
                Attempt::Retry(e)
            } else {
                Attempt::Fail(e)
            }
        }
        Err(e) => {
            // The connection broke during COMMIT: ask the server what
            // became of the transaction.
            let _ = deadpool_postgres::Object::take(conn);
            let e = io("commit a group of checkpoints")(e);
            match resolve(inner, txid).await {
                Some(true) => Attempt::Done(decided.0, decided.1, decided.2),
                Some(false) => Attempt::Retry(e),
                None => Attempt::Fail(e),
            }
        }
    }
}

#[cfg(test)]
fn injected_error() -> tokio_postgres::Error {
    // Any error without a server answer will do.
    tokio_postgres::Error::__private_api_timeout()
}

/// A lone checkpoint: one statement, fence and upsert, in its own
/// transaction (one round trip, like an INSERT). A broken connection
/// leaves its outcome unknown: surfaced as a store error, not retried.
async fn lone_checkpoint(
    inner: &Inner,
    conn: &deadpool_postgres::Object,
    job: &Job,
    cp: &Cp,
    progress: bool,
    me: i64,
) -> Attempt {
    let written = async {
        let statement = conn
            .prepare_cached(&inner.sql(
                "WITH f AS (
                     UPDATE {s}.instances
                     SET recoveries = CASE WHEN $7 THEN 0 ELSE recoveries END
                     WHERE id = $1 AND epoch = $2 AND owner = $3 RETURNING id),
                 c AS (
                     INSERT INTO {s}.checkpoints (instance_id, key, name, ended_wait, record)
                     SELECT f.id, $4, $5, $6, $8 FROM f
                     ON CONFLICT (instance_id, key) DO UPDATE
                       SET record = EXCLUDED.record, ended_wait = EXCLUDED.ended_wait)
                 SELECT count(*) FROM f",
            ))
            .await?;
        let row = conn
            .query_one(
                &statement,
                &[
                    &job.id,
                    &job.epoch,
                    &me,
                    &cp.key,
                    &cp.name,
                    &cp.ended_wait,
                    &progress,
                    &cp.bytes,
                ],
            )
            .await?;
        Ok::<bool, tokio_postgres::Error>(row.get::<_, i64>(0) == 1)
    }
    .await;
    match written {
        Ok(true) => Attempt::Done(vec![Ok(Committed::Written)], Vec::new(), Vec::new()),
        Ok(false) => Attempt::Done(
            vec![Err(Error::Instance(InstanceError::LeaseLost {
                instance: job.id.clone(),
                epoch: job.epoch as u64,
            }))],
            Vec::new(),
            Vec::new(),
        ),
        Err(e) => {
            let retry = e.as_db_error().is_some() && retryable(&e);
            let e = io("write a checkpoint")(e);
            if retry {
                Attempt::Retry(e)
            } else {
                Attempt::Fail(e)
            }
        }
    }
}

/// Whether transaction `txid` committed: `None` when that cannot be known.
async fn resolve(inner: &Inner, txid: Option<i64>) -> Option<bool> {
    let txid = txid?;
    for _ in 0..100 {
        let status: Option<String> = match inner.conn().await {
            Ok(conn) => match conn.query_one("SELECT txid_status($1)", &[&txid]).await {
                Ok(row) => row.get(0),
                Err(_) => None,
            },
            Err(_) => None,
        };
        match status.as_deref() {
            Some("committed") => return Some(true),
            Some("aborted") => return Some(false),
            // In progress (the server has not noticed the broken
            // connection yet), or the server is unreachable: ask again.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

type Decided = (
    Vec<Result<Committed>>,
    Vec<Notice>,
    Vec<(String, Option<u64>)>,
);

/// Inside the transaction: locks, decides and writes; returns each write's
/// outcome, the hints to send and the timers parked or unparked here.
async fn decide_and_write(
    inner: &Inner,
    conn: &deadpool_postgres::ClientWrapper,
    jobs: &[Job],
    me: i64,
    txid: &mut Option<i64>,
) -> std::result::Result<Decided, tokio_postgres::Error> {
    let mut ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let fence = conn
        .prepare_cached(&inner.sql(
            "SELECT id, epoch, owner FROM {s}.instances WHERE id = ANY($1)
             ORDER BY id FOR UPDATE",
        ))
        .await?;
    let current = conn.prepare_cached("SELECT txid_current()").await?;
    // One round trip: the three go out pipelined, in this order.
    let fence_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
    let (begun, id, rows) = tokio::join!(
        conn.batch_execute("BEGIN"),
        conn.query_one(&current, &[]),
        conn.query(&fence, &fence_params),
    );
    begun?;
    *txid = Some(id?.get(0));
    let rows = rows?;
    let mut held: HashMap<String, (i64, Option<i64>)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
        .collect();
    let fenced = |held: &HashMap<String, (i64, Option<i64>)>, job: &Job| {
        held.get(&job.id)
            .is_some_and(|(epoch, owner)| *epoch == job.epoch && *owner == Some(me))
    };
    // The events that parks and timeouts of held instances depend on.
    let mut wanted: (Vec<&str>, Vec<&str>, Vec<i32>) = Default::default();
    for job in jobs.iter().filter(|j| fenced(&held, j)) {
        match &job.write {
            Prepared::Park { awaited, .. } => {
                for (name, seq) in awaited {
                    wanted.0.push(&job.id);
                    wanted.1.push(name);
                    wanted.2.push(*seq);
                }
            }
            Prepared::TimeOut(cp) => {
                if let Some(seq) = timeout_seq(&cp.key, &job.id, &cp.name) {
                    wanted.0.push(&job.id);
                    wanted.1.push(&cp.name);
                    wanted.2.push(seq);
                }
            }
            _ => {}
        }
    }
    let stored: HashSet<(String, String, i32)> = if wanted.0.is_empty() {
        HashSet::new()
    } else {
        conn.query(
            &conn
                .prepare_cached(&inner.sql(
                    "SELECT e.instance_id, e.name, e.seq FROM {s}.events e
                 JOIN unnest($1::text[], $2::text[], $3::int4[]) AS w(id, name, seq)
                   ON e.instance_id = w.id AND e.name = w.name AND e.seq = w.seq",
                ))
                .await?,
            &[&wanted.0, &wanted.1, &wanted.2],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let has_event =
        |id: &str, name: &str, seq: i32| stored.contains(&(id.to_string(), name.to_string(), seq));

    let mut results = Vec::with_capacity(jobs.len());
    let mut checkpoints: Vec<(&str, Cp)> = Vec::new();
    let mut changes: HashMap<&str, Change> = HashMap::new();
    let mut notices = Vec::new();
    let mut parked = Vec::new();
    for job in jobs {
        if !fenced(&held, job) {
            results.push(Err(Error::Instance(InstanceError::LeaseLost {
                instance: job.id.clone(),
                epoch: job.epoch as u64,
            })));
            continue;
        }
        let id = job.id.as_str();
        let result = match &job.write {
            Prepared::Checkpoint(cp, progress) => {
                checkpoints.push((id, cp.clone()));
                if *progress {
                    changes.entry(id).or_default().recoveries = Some(0);
                }
                Committed::Written
            }
            Prepared::TimeOut(cp) => {
                let seq = timeout_seq(&cp.key, id, &cp.name);
                if seq.is_some_and(|seq| has_event(id, &cp.name, seq)) {
                    Committed::EventFirst
                } else {
                    checkpoints.push((id, cp.clone()));
                    Committed::Written
                }
            }
            Prepared::Park {
                bytes,
                status,
                wake_at,
                awaited,
            } => {
                if awaited.iter().any(|(name, seq)| has_event(id, name, *seq)) {
                    Committed::EventFirst
                } else {
                    let change = changes.entry(id).or_default();
                    change.status = Some(*status);
                    change.park_op = 1;
                    change.park = Some(bytes.clone());
                    change.wake_at = wake_at.map(|w| w as i64);
                    change.release = true;
                    parked.push((job.id.clone(), *wake_at));
                    held.remove(id);
                    Committed::Written
                }
            }
            Prepared::Record {
                bytes,
                status,
                active,
                blocked,
                updated_ms,
            } => {
                let change = changes.entry(id).or_default();
                change.record = Some(bytes.clone());
                change.status = Some(*status);
                change.updated_ms = Some(*updated_ms);
                change.blocked = *blocked;
                match active {
                    Some(n) => change.recoveries = Some((*n).min(i32::MAX as u32) as i32),
                    None => {
                        change.finished = true;
                        change.park_op = 2;
                        change.park = None;
                        change.wake_at = None;
                    }
                }
                if *status != status::RUNNING {
                    change.release = true;
                    held.remove(id);
                    notices.push(Notice::Ended { id: job.id.clone() });
                }
                Committed::Written
            }
        };
        results.push(Ok(result));
    }

    let mut writes: Vec<(tokio_postgres::Statement, Params)> = Vec::new();
    if !checkpoints.is_empty() {
        // One row per key: the last write of a key wins.
        let mut seen = HashSet::new();
        let mut cps: Vec<&(&str, Cp)> = checkpoints
            .iter()
            .rev()
            .filter(|(id, cp)| seen.insert((*id, cp.key.as_slice())))
            .collect();
        cps.sort_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
        let insert = conn
            .prepare_cached(&inner.sql(
                "INSERT INTO {s}.checkpoints (instance_id, key, name, ended_wait, record)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bool[], $5::bytea[])
                 ON CONFLICT (instance_id, key) DO UPDATE
                   SET record = EXCLUDED.record, ended_wait = EXCLUDED.ended_wait",
            ))
            .await?;
        let params: Params = vec![
            Box::new(cps.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>()),
            Box::new(cps.iter().map(|(_, cp)| cp.key.clone()).collect::<Vec<_>>()),
            Box::new(
                cps.iter()
                    .map(|(_, cp)| cp.name.clone())
                    .collect::<Vec<_>>(),
            ),
            Box::new(cps.iter().map(|(_, cp)| cp.ended_wait).collect::<Vec<_>>()),
            Box::new(
                cps.iter()
                    .map(|(_, cp)| cp.bytes.clone())
                    .collect::<Vec<_>>(),
            ),
        ];
        writes.push((insert, params));
    }
    if !changes.is_empty() {
        let mut rows: Vec<(&str, Change)> = changes.into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let update = conn
            .prepare_cached(&inner.sql(
                "UPDATE {s}.instances i SET
                     record = COALESCE(u.record, i.record),
                     status = COALESCE(u.status, i.status),
                     owner = CASE WHEN u.release THEN NULL ELSE i.owner END,
                     blocked_by = CASE WHEN u.blocked THEN $12 ELSE i.blocked_by END,
                     recoveries = COALESCE(u.recoveries, i.recoveries),
                     park = CASE u.park_op WHEN 1 THEN u.park WHEN 2 THEN NULL ELSE i.park END,
                     wake_at_ms = CASE u.park_op WHEN 1 THEN u.wake_at WHEN 2 THEN NULL
                                  ELSE i.wake_at_ms END,
                     finished = i.finished OR u.finished,
                     updated_ms = COALESCE(u.updated_ms, i.updated_ms),
                     updated_at = now()
                 FROM unnest($1::text[], $2::bytea[], $3::int2[], $4::bool[], $5::bool[],
                             $6::int4[], $7::int2[], $8::bytea[], $9::int8[], $10::bool[],
                             $11::int8[])
                      AS u(id, record, status, release, blocked, recoveries, park_op, park,
                           wake_at, finished, updated_ms)
                 WHERE i.id = u.id",
            ))
            .await?;
        let params: Params = vec![
            Box::new(
                rows.iter()
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<_>>(),
            ),
            Box::new(
                rows.iter_mut()
                    .map(|(_, c)| c.record.take())
                    .collect::<Vec<_>>(),
            ),
            Box::new(rows.iter().map(|(_, c)| c.status).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.release).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.blocked).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.recoveries).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.park_op).collect::<Vec<_>>()),
            Box::new(
                rows.iter_mut()
                    .map(|(_, c)| c.park.take())
                    .collect::<Vec<_>>(),
            ),
            Box::new(rows.iter().map(|(_, c)| c.wake_at).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.finished).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.updated_ms).collect::<Vec<_>>()),
            Box::new(me),
        ];
        writes.push((update, params));
    }
    // Pipelined; COMMIT follows once every one answered.
    let answers = pipelined(conn, &writes).await;
    for answer in answers {
        answer?;
    }
    Ok((results, notices, parked))
}

/// Owned statement parameters.
type Params = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

/// Runs `writes` on `conn` pipelined (sent together, answered in order).
async fn pipelined(
    conn: &tokio_postgres::Client,
    writes: &[(tokio_postgres::Statement, Params)],
) -> Vec<std::result::Result<u64, tokio_postgres::Error>> {
    let params: Vec<Vec<&(dyn tokio_postgres::types::ToSql + Sync)>> = writes
        .iter()
        .map(|(_, p)| p.iter().map(|b| &**b as _).collect())
        .collect();
    match writes {
        [] => Vec::new(),
        [(a, _)] => vec![conn.execute(a, &params[0]).await],
        [(a, _), (b, _), ..] => {
            let (x, y) = tokio::join!(conn.execute(a, &params[0]), conn.execute(b, &params[1]));
            vec![x, y]
        }
    }
}

/// The event number a timeout's checkpoint stands for: its occurrence
/// (the last four bytes of an occurrence key).
fn timeout_seq(key: &[u8], id: &str, name: &str) -> Option<i32> {
    let prefix = crate::records::name_prefix(id, name);
    let rest = key.strip_prefix(prefix.as_slice())?;
    let n: [u8; 4] = rest.try_into().ok()?;
    Some(u32::from_be_bytes(n) as i32)
}
