//! How a run of an instance ended, recorded: completed, blocked
//! (resumable), failed, cancelled or set aside; and the transitions of an
//! instance's history.

use crate::backend::{Lease, Write};
use crate::error::{Error, Result};
use crate::records::{InstanceRecord, InstanceState, TransitionKind, TransitionRecord};

use super::Core;
use super::driver::lost;
use super::handle::outcome_of;

impl Core {
    /// Records how the instance ended: completed, blocked (resumable),
    /// failed or cancelled. The write is fenced: a cancel that was recorded
    /// first wins (the write is refused with `LeaseLost`).
    pub(super) async fn end(
        &self,
        id: &str,
        mut record: InstanceRecord,
        recoveries: u32,
        lease: Lease,
        outcome: Result<(Vec<u8>, bool)>,
    ) -> Result<Vec<u8>> {
        match outcome {
            Ok((output, is_err)) => {
                record.state = InstanceState::Returned {
                    output: output.clone(),
                    is_err,
                };
                let ending = crate::metrics::Ending::new(&record.workflow, &record.state);
                let parent = record.parent().map(|(p, _)| p.to_string());
                crate::crash::point("complete.before_write");
                let write = Write::Record {
                    record,
                    active: None,
                    appended: Some(self.transition(TransitionKind::Completed)),
                };
                self.services.backend.commit(id, lease, write).await?;
                ending.record();
                self.tell_parent(id, parent.as_deref()).await;
                crate::crash::point("complete.after_write");
                tracing::info!("instance completed");
                Ok(output)
            }
            Err(error) if lost(&error) => Err(error),
            Err(error) => {
                self.end_with_error(id, record, recoveries, lease, error)
                    .await
            }
        }
    }

    /// Records that the instance is blocked (resumable) or failed, and returns `error`.
    pub(super) async fn end_with_error(
        &self,
        id: &str,
        mut record: InstanceRecord,
        recoveries: u32,
        lease: Lease,
        error: Error,
    ) -> Result<Vec<u8>> {
        let text = error.to_string();
        let active = error.blocks().then_some(recoveries);
        let kind =
            if let Error::Replay(crate::error::ReplayError::Incompatible { reason, .. }) = &error {
                let state = InstanceState::Incompatible {
                    error: reason.clone(),
                };
                if record.state == state {
                    // Already set aside for this reason: left untouched.
                    let _ = self.services.backend.release(id, lease).await;
                    return Err(error);
                }
                record.state = state;
                TransitionKind::Incompatible { error: text }
            } else if let Error::Instance(crate::error::InstanceError::Cancelled { .. }) = &error {
                record.state = InstanceState::Cancelled;
                TransitionKind::Cancelled
            } else if let Error::Instance(crate::error::InstanceError::DeadlinePassed {
                deadline_ms,
                ..
            }) = &error
            {
                record.state = InstanceState::Cancelled;
                TransitionKind::DeadlinePassed {
                    at_ms: *deadline_ms,
                }
            } else if let Error::Instance(crate::error::InstanceError::NeedsAttention {
                reason,
                ..
            }) = &error
            {
                record.state = InstanceState::NeedsAttention {
                    error: reason.clone(),
                };
                TransitionKind::NeedsAttention { error: text }
            } else if active.is_some() {
                record.state = InstanceState::Blocked {
                    error: text.clone(),
                };
                TransitionKind::Blocked { error: text }
            } else {
                record.state = InstanceState::Failed {
                    error: text.clone(),
                };
                TransitionKind::Failed { error: text }
            };
        tracing::warn!(durable.error = %error, durable.status = ?kind, "instance stopped by an error");
        let ending = crate::metrics::Ending::new(&record.workflow, &record.state);
        let cancelled = record.state == InstanceState::Cancelled;
        // A parent waits for this end (not for a blocked child's).
        let parent = outcome_of(id, &record, false)
            .and(record.parent())
            .map(|(p, _)| p.to_string());
        // If the store itself is failing this write fails too; the instance
        // then stays `Running` in the store and resumes at the next open.
        let write = Write::Record {
            record,
            active,
            appended: Some(self.transition(kind)),
        };
        match self.services.backend.commit(id, lease, write).await {
            Ok(_) => {
                ending.record();
                if cancelled {
                    self.cancel_children(id).await;
                }
                self.tell_parent(id, parent.as_deref()).await;
                Err(error)
            }
            // Cancelled (or taken over) first: that end wins.
            Err(e) if lost(&e) => Err(e),
            Err(write) => {
                tracing::error!(
                    durable.error = %write,
                    "the instance's end could not be recorded; it resumes at the next open"
                );
                Err(error)
            }
        }
    }

    /// Appends a transition stamped now (see
    /// [`InstanceRecord::push_transition`]).
    pub(super) fn push_transition(&self, record: &mut InstanceRecord, kind: TransitionKind) {
        record.push_transition(self.transition(kind));
    }

    /// A transition stamped now.
    pub(super) fn transition(&self, kind: TransitionKind) -> TransitionRecord {
        TransitionRecord {
            at_ms: self.services.clock.now_ms(),
            kind,
        }
    }
}
