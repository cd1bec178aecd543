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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::backend::{Committed, Lease, Write};
use crate::error::{Error, Result, StoreError};
use crate::records::{
    CheckpointRecord, CheckpointState, InstanceRecord, InstanceState, TransitionRecord, keyed_key,
    occurrence_key,
};

use super::batches::{Batches, fill};
use super::{Inner, encode, status};

/// Most writes in one transaction.
const MAX_GROUP: usize = 1024;
/// Groups written at once, each on its own connection.
const GROUPS_IN_FLIGHT: usize = 2;
/// Attempts at a group whose transaction surely did not commit, at least
/// (then more while the lease lasts).
pub(super) const MIN_ATTEMPTS: u32 = 3;

/// One write, encoded, waiting for its group.
pub(super) struct Job {
    pub(super) id: String,
    pub(super) epoch: i64,
    pub(super) write: Prepared,
    reply: oneshot::Sender<Result<Committed>>,
}

/// An instance record to write.
pub(super) enum Body {
    /// Encoded, as given.
    Encoded(Vec<u8>),
    /// To take the stored transitions, read under the row's lock, followed
    /// by the transition, and then be encoded (see [`Write::Record`]).
    Appending(Box<InstanceRecord>, TransitionRecord),
}

/// A write, encoded for the statements.
pub(super) enum Prepared {
    Checkpoint(Cp, bool),
    Record {
        body: Body,
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
pub(super) struct Cp {
    pub(super) key: Vec<u8>,
    pub(super) name: String,
    pub(super) ended_wait: bool,
    pub(super) bytes: Vec<u8>,
}

impl Cp {
    pub(super) fn of(id: &str, record: &CheckpointRecord) -> Result<Cp> {
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
    queue: Batches<Job>,
    /// Writes handed over or written directly, not answered yet.
    pending: std::sync::atomic::AtomicUsize,
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
        let (queue, rx) = Batches::new();
        (
            Committer {
                queue,
                pending: Default::default(),
                stats: CommitStats::default(),
                #[cfg(test)]
                hold: tokio::sync::Mutex::new(()),
                #[cfg(test)]
                faults: Default::default(),
            },
            rx,
        )
    }

    /// Whether a write may go to the database from its caller's task: none
    /// is pending (it is then marked pending until its [`Pending`] drops).
    /// Saves the hand-off to the committer and back for a lone write; with
    /// others pending, it joins a group.
    fn direct(&self) -> bool {
        #[cfg(test)]
        if self.hold.try_lock().is_err()
            || !self
                .faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            return false;
        }
        self.pending
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Stops taking writes and waits until every queued one is answered.
    pub(super) async fn close(&self) {
        self.queue.close().await;
    }
}

impl Inner {
    pub(super) async fn commit(&self, id: &str, lease: Lease, write: Write) -> Result<Committed> {
        let prepared = match write {
            Write::Publish { record, key, value } => {
                let beside = super::published::Beside::Value { key: &key };
                return self.publish(id, lease, &record, beside, &value).await;
            }
            Write::Append {
                record,
                key,
                offset,
                value,
            } => {
                let beside = super::published::Beside::Entry { key: &key, offset };
                return self.publish(id, lease, &record, beside, &value).await;
            }
            Write::Checkpoint { record, progress } => {
                Prepared::Checkpoint(Cp::of(id, &record)?, progress)
            }
            Write::Record {
                record,
                active,
                appended,
            } => Prepared::Record {
                status: status::of_state(&record.state),
                active,
                blocked: matches!(record.state, InstanceState::Blocked { .. }),
                updated_ms: match &appended {
                    Some(t) => t.at_ms as i64,
                    None => status::updated_ms(&record),
                },
                body: match appended {
                    Some(t) => Body::Appending(Box::new(record), t),
                    None => Body::Encoded(encode(&record, id, "the instance record")?),
                },
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
        if self.committer.queue.closed() {
            return Err(Error::Store(StoreError::Closed));
        }
        if matches!(job.write, Prepared::Checkpoint(..)) && self.committer.direct() {
            let _pending = Pending(&self.committer);
            let result = super::group::write_group(self, std::slice::from_ref(&job)).await;
            return result
                .into_iter()
                .next()
                .unwrap_or(Err(Error::Store(StoreError::Closed)));
        }
        self.committer.pending.fetch_add(1, Ordering::SeqCst);
        let _pending = Pending(&self.committer);
        if !self.committer.queue.send(job) {
            return Err(Error::Store(StoreError::Closed));
        }
        self.committer.stats.sent.fetch_add(1, Ordering::Relaxed);
        answer
            .await
            .unwrap_or(Err(Error::Store(StoreError::Closed)))
    }
}

/// A write counted as pending until this drops (answered, or its caller
/// gone).
struct Pending<'a>(&'a Committer);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
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
        fill(&mut rx, &mut group, MAX_GROUP);
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let results = super::group::write_group(&inner, &group).await;
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
    inner.committer.queue.answered();
}
