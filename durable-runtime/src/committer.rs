//! Group commit: one thread drains the queue of pending batches, applies them
//! in one [`Store::apply`] call (one flush and one fsync for all), then wakes
//! every waiter. No waiter is woken before the apply that covers its batch.
//!
//! When no other commit is in flight, the caller applies its batch itself
//! instead of handing it to the thread: a lone workflow then pays one append
//! and one `fdatasync`, not also two thread wake-ups. Any commit that starts
//! while another is in flight goes through the queue and is grouped; applies
//! never overlap (one lock covers both paths).
//!
//! A failed apply poisons the committer: the store may hold part of what was
//! asked, or buffer writes it could not make durable, so every later commit
//! fails with the same error until the engine is reopened (as sled itself
//! does after an I/O error). The engine stops scheduling steps meanwhile.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::store::{Batch, Store};

/// Most batches one group takes, so one slow group cannot grow without bound.
const MAX_GROUP: usize = 4096;

/// The answer to one queued commit, with its batch handed back: the
/// waiter's thread frees it, not the committer's (whose time every other
/// waiter of the group waits for).
type Reply = oneshot::Sender<(Result<(), StoreError>, Batch)>;

/// Counters of the committer's work.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    pub batches: AtomicU64,
    pub groups: AtomicU64,
}

/// The sending side of the committer thread.
pub(crate) struct Committer {
    tx: Mutex<Option<mpsc::Sender<(Batch, Reply)>>>,
    store: Arc<dyn Store>,
    /// Held around every apply, by the thread or by an inline caller.
    applying: Arc<Mutex<()>>,
    /// Commits started and not yet answered.
    in_flight: AtomicUsize,
    failure: Arc<Mutex<Option<StoreError>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub stats: Arc<CommitStats>,
}

impl Committer {
    /// Starts the committer thread over `store`.
    pub(crate) fn start(store: Arc<dyn Store>) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<(Batch, Reply)>();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = Arc::clone(&stats);
        let failure = Arc::new(Mutex::new(None));
        let thread_failure = Arc::clone(&failure);
        let applying = Arc::new(Mutex::new(()));
        let thread_applying = Arc::clone(&applying);
        let thread_store = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("durable-committer".into())
            .spawn(move || {
                run(
                    thread_store,
                    rx,
                    thread_stats,
                    thread_failure,
                    thread_applying,
                )
            })?;
        Ok(Committer {
            tx: Mutex::new(Some(tx)),
            store,
            applying,
            in_flight: AtomicUsize::new(0),
            failure,
            thread: Mutex::new(Some(thread)),
            stats,
        })
    }

    /// Writes `batch` atomically and durably; returns once it is on disk.
    pub(crate) async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if let Some(failure) = self.failure() {
            return Err(failure);
        }
        let in_flight = InFlight::enter(&self.in_flight);
        // Alone: apply inline. The thread may still hold the lock for a
        // group it took just before; then queue as usual.
        if in_flight.alone
            && let Ok(_applying) = self.applying.try_lock()
        {
            if self.tx.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                return Err(StoreError::Closed);
            }
            return apply(&*self.store, &[batch], &self.stats, &self.failure);
        }
        let (reply, done) = oneshot::channel();
        let sent = match &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send((batch, reply)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Closed);
        }
        match done.await {
            Ok((result, batch)) => {
                drop(batch);
                result
            }
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// The error of the first failed apply, if one failed.
    pub(crate) fn failure(&self) -> Option<StoreError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the thread once it has written everything queued, and waits for
    /// it; its reference to the store is dropped by then. Later commits fail
    /// with [`StoreError::Closed`].
    pub(crate) async fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn run(
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<(Batch, Reply)>,
    stats: Arc<CommitStats>,
    failure: Arc<Mutex<Option<StoreError>>>,
    applying: Arc<Mutex<()>>,
) {
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
        let result = {
            let _applying = applying.lock().unwrap_or_else(|e| e.into_inner());
            apply(&*store, &batches, &stats, &failure)
        };
        for (reply, batch) in replies.drain(..).zip(batches.drain(..)) {
            let _ = reply.send((result.clone(), batch));
        }
    }
}

/// Applies one group, unless the committer is poisoned, and poisons it on
/// failure. Call with the `applying` lock held.
fn apply(
    store: &dyn Store,
    batches: &[Batch],
    stats: &CommitStats,
    failure: &Mutex<Option<StoreError>>,
) -> Result<(), StoreError> {
    let poisoned = failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let span = tracing::debug_span!(
        "durable.commit",
        durable.batches = batches.len(),
        durable.bytes = tracing::field::Empty,
        durable.apply_us = tracing::field::Empty,
    );
    let _entered = span.enter();
    let result = match poisoned {
        Some(error) => Err(error),
        None => {
            let started = (!span.is_disabled()).then(std::time::Instant::now);
            let timer = crate::metrics::Timer::start();
            let result = store.apply(batches);
            crate::metrics::commit_group(crate::metrics::Backend::Embedded, batches.len(), timer);
            if let Some(started) = started {
                span.record(
                    "durable.bytes",
                    batches.iter().map(Batch::size).sum::<usize>(),
                );
                span.record("durable.apply_us", started.elapsed().as_micros() as u64);
            }
            result
        }
    };
    if let Err(error) = &result {
        tracing::error!(durable.error = %error, "group commit failed; the store takes no more writes until reopened");
    }
    if let Err(error) = &result {
        failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| error.clone());
    }
    stats
        .batches
        .fetch_add(batches.len() as u64, Ordering::Relaxed);
    stats.groups.fetch_add(1, Ordering::Relaxed);
    result
}

/// Counts a commit in flight; `alone` when no other one was.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    alone: bool,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> InFlight<'a> {
        let alone = count.fetch_add(1, Ordering::SeqCst) == 0;
        InFlight { count, alone }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}
