//! The sending side of a task that writes what is queued in batches (the
//! group committer, the create batcher): items go in until the backend
//! closes; closing waits until the task answered everything queued.

use tokio::sync::{mpsc, oneshot};

/// The queue of a batch task.
pub(super) struct Batches<T> {
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<T>>>,
    done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    done_tx: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl<T> Batches<T> {
    /// The queue, and the receiving end for its task.
    pub(super) fn new() -> (Batches<T>, mpsc::UnboundedReceiver<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        (
            Batches {
                tx: std::sync::Mutex::new(Some(tx)),
                done: tokio::sync::Mutex::new(Some(done)),
                done_tx: std::sync::Mutex::new(Some(done_tx)),
            },
            rx,
        )
    }

    /// Queues `item`; `false` once the queue is closed.
    pub(super) fn send(&self, item: T) -> bool {
        match &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(item).is_ok(),
            None => false,
        }
    }

    /// Whether the queue stopped taking items.
    pub(super) fn closed(&self) -> bool {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Stops taking items and waits until the task says it answered every
    /// queued one ([`answered`](Self::answered)).
    pub(super) async fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(done) = self.done.lock().await.take() {
            let _ = done.await;
        }
    }

    /// Called by the task once its channel is closed and everything it took
    /// is answered.
    pub(super) fn answered(&self) {
        if let Some(done) = self
            .done_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = done.send(());
        }
    }
}

/// Adds to `batch` whatever else is queued, up to `max` in all.
pub(super) fn fill<T>(rx: &mut mpsc::UnboundedReceiver<T>, batch: &mut Vec<T>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}
