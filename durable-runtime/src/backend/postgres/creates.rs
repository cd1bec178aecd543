//! Group create: the creates of this process (each `start`), gathered
//! while a batch is being written, go to PostgreSQL as one statement (one
//! transaction, one commit), the statement of `create_many`. A burst of
//! starts pays a commit per batch, not one per instance; a lone start pays
//! one hand-off to the batch task.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::backend::Created;
use crate::error::{Error, Result, StoreError};
use crate::records::InstanceRecord;

use super::Inner;
use super::batches::{Batches, fill};

/// Most creates in one statement.
const MAX_BATCH: usize = 1024;
/// Batches written at once, each on its own connection.
const BATCHES_IN_FLIGHT: usize = 2;

/// One create waiting for its batch.
pub(super) struct Pending {
    id: String,
    record: InstanceRecord,
    reply: oneshot::Sender<Result<Created>>,
}

/// The queue of the batch task.
pub(super) type Creator = Batches<Pending>;

impl Inner {
    /// Atomic create-if-absent of instance `id`, owned by this worker when
    /// new; durable when it returns.
    pub(super) async fn create(&self, id: &str, record: &InstanceRecord) -> Result<Created> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            id: id.to_string(),
            record: record.clone(),
            reply,
        };
        if !self.creator.send(pending) {
            return Err(Error::Store(StoreError::Closed));
        }
        answer
            .await
            .unwrap_or(Err(Error::Store(StoreError::Closed)))
    }
}

/// The batch task: takes what is queued, creates it with one statement,
/// answers, again, until the backend closes.
pub(super) async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut batch = vec![first];
        fill(&mut rx, &mut batch, MAX_BATCH);
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            write(&inner, batch).await;
            drop(slot);
        });
    }
    let _ = slots.acquire_many(BATCHES_IN_FLIGHT as u32).await;
    inner.creator.answered();
}

/// Creates a batch and answers each create. An id asked twice in one
/// batch is one instance: the first ask gets what the statement says, the
/// later ones find it existing.
async fn write(inner: &Inner, batch: Vec<Pending>) {
    let mut first: HashMap<String, usize> = HashMap::new();
    let mut items: Vec<(String, InstanceRecord)> = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for Pending { id, record, reply } in batch {
        let at = *first.entry(id.clone()).or_insert_with(|| {
            items.push((id, record));
            items.len() - 1
        });
        replies.push((at, reply));
    }
    match inner.create_many(&items).await {
        Ok(created) => {
            let mut asks = vec![0usize; items.len()];
            for (at, _) in &replies {
                asks[*at] += 1;
            }
            // What the later asks of an id asked twice find.
            let later: Vec<Option<InstanceRecord>> = created
                .iter()
                .zip(&items)
                .zip(&asks)
                .map(|((created, (_, record)), asks)| {
                    (*asks > 1).then(|| match created {
                        Created::Exists(stored) => stored.clone(),
                        Created::New(_) | Created::Unclaimed => record.clone(),
                    })
                })
                .collect();
            let mut created: Vec<Option<Created>> = created.into_iter().map(Some).collect();
            for (at, reply) in replies {
                let answer = match created.get_mut(at).and_then(Option::take) {
                    Some(created) => Ok(created),
                    None => match later.get(at).cloned().flatten() {
                        Some(record) => Ok(Created::Exists(record)),
                        None => Err(Error::Store(StoreError::io_message(
                            "create instances",
                            format!("no answer for instance {:?}", items[at].0),
                        ))),
                    },
                };
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
