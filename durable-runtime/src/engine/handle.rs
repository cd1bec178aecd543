//! [`Handle`]: what a start or attach returns, to wait for an instance's
//! outcome; and the outcome a stored record implies.

use std::marker::PhantomData;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::journal::decode_value;
use crate::records::{InstanceRecord, InstanceState};

use super::Core;
use super::instances::Outcome;

/// A started instance: await [`result`](Handle::result) for its output.
#[must_use = "a handle does nothing unless its result is awaited; the instance runs either way"]
pub struct Handle<O> {
    id: String,
    done: watch::Receiver<Outcome>,
    /// To let go of a parked instance's slot when the last handle drops.
    core: std::sync::Weak<Core>,
    _output: PhantomData<fn() -> O>,
}

impl<O> Handle<O> {
    pub(super) fn new(id: String, done: watch::Receiver<Outcome>, core: &Arc<Core>) -> Self {
        Handle {
            id,
            done,
            core: Arc::downgrade(core),
            _output: PhantomData,
        }
    }
}

impl<O> Drop for Handle<O> {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.release(&self.id, &self.done);
        }
    }
}

impl<O> std::fmt::Debug for Handle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<O: serde::de::DeserializeOwned> Handle<O> {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the instance to finish and returns the workflow's output.
    pub async fn result(mut self) -> Result<O> {
        let outcome = match self.done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(Ok(bytes)) => decode_value(&bytes).map_err(|reason| {
                Error::Replay(crate::error::ReplayError::ValueDecode {
                    instance: self.id.clone(),
                    what: "output",
                    expected_type: std::any::type_name::<O>(),
                    reason,
                })
            }),
            Some(Err(e)) => Err(e),
            None => Err(Error::Instance(crate::error::InstanceError::ShutDown {
                instance: self.id.clone(),
            })),
        }
    }
}

/// The outcome of an instance that has one: finished (completed, failed,
/// cancelled), or set aside for attention when not resumed by hand.
pub(super) fn outcome_of(id: &str, record: &InstanceRecord, manual: bool) -> Outcome {
    let error = match &record.state {
        InstanceState::Completed { output } | InstanceState::Returned { output, .. } => {
            return Some(Ok(output.clone()));
        }
        InstanceState::Failed { error } => crate::error::InstanceError::Failed {
            instance: id.to_string(),
            reason: error.clone(),
        },
        InstanceState::Cancelled => crate::error::InstanceError::Cancelled {
            instance: id.to_string(),
        },
        InstanceState::NeedsAttention { error } if !manual => {
            crate::error::InstanceError::NeedsAttention {
                instance: id.to_string(),
                reason: error.clone(),
            }
        }
        InstanceState::Running
        | InstanceState::Blocked { .. }
        | InstanceState::Incompatible { .. }
        | InstanceState::NeedsAttention { .. } => return None,
    };
    Some(Err(Error::Instance(error)))
}

impl Core {
    /// Drops the slot of parked instance `id` when `last` is the last
    /// receiver of its outcome: a parked instance nobody waits for holds
    /// nothing but its park table entry.
    fn release(&self, id: &str, last: &watch::Receiver<Outcome>) {
        let mut running = self.instances.lock();
        let Some(slot) = running.get(id) else { return };
        let probe = slot.done.subscribe();
        // Two receivers: the probe and `last`, which is still alive.
        let unwatched = last.same_channel(&probe) && slot.done.receiver_count() <= 2;
        drop(probe);
        if unwatched && !slot.driving.active() {
            running.remove(id);
        }
    }
}
