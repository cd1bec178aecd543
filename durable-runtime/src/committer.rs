//! Group commit: one thread drains the queue of pending batches, applies them
//! in one [`Store::apply`] call (one flush and one fsync for all), then wakes
//! every waiter. No waiter is woken before the apply that covers its batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::store::{Batch, Store};

/// Most batches one group takes, so one slow group cannot grow without bound.
const MAX_GROUP: usize = 4096;

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Counters of the committer's work.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    pub batches: AtomicU64,
    pub groups: AtomicU64,
}

/// The sending side; dropping every clone stops the thread.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::Sender<(Batch, Reply)>,
    pub stats: Arc<CommitStats>,
}

impl Committer {
    /// Starts the committer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<(Batch, Reply)>();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("durable-committer".into())
            .spawn(move || run(store, rx, thread_stats))?;
        Ok(Committer { tx, stats })
    }

    /// Writes `batch` atomically and durably; returns once it is on disk.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((batch, reply))
            .map_err(|_| StoreError::Closed)?;
        done.await.unwrap_or(Err(StoreError::Closed))
    }
}

fn run(store: Arc<dyn Store>, rx: mpsc::Receiver<(Batch, Reply)>, stats: Arc<CommitStats>) {
    let mut batches = Vec::new();
    let mut replies = Vec::new();
    while let Ok((batch, reply)) = rx.recv() {
        batches.push(batch);
        replies.push(reply);
        while batches.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok((batch, reply)) => {
                    batches.push(batch);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let result = store.apply(&batches);
        stats
            .batches
            .fetch_add(batches.len() as u64, Ordering::Relaxed);
        stats.groups.fetch_add(1, Ordering::Relaxed);
        batches.clear();
        for reply in replies.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}
