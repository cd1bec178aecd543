//! One run of one instance: resume bookkeeping and the crash-loop guard,
//! replaying the workflow against its checkpoints, parking, and recording
//! how it ended.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use tracing::Instrument;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::panic::{CatchUnwind, panic_message};
use crate::records::{InstanceRecord, InstanceState, TransitionKind, TransitionRecord};

use super::Core;
use super::instances::Slot;
use super::registry::Erased;
use super::scheduler::PARK_AFTER_MS;

/// Transitions kept per instance; older `Resumed` entries are dropped first.
const MAX_TRANSITIONS: usize = 64;

/// How an instance task begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Begin {
    /// Just created: nothing to resume.
    Fresh,
    /// Resumed by recovery or by a start that found it unfinished; counts
    /// towards `max_recoveries`. Carries the stored count of resumes
    /// without progress when the caller already read it.
    Resume(Option<u32>),
    /// Resumed by hand with `Engine::resume`: the count starts again.
    ResumeByHand,
    /// Woken from parking by its timer or an event: not a recovery.
    Wake,
}

/// How a task driving an instance stopped.
pub(super) enum DriveEnd {
    /// The instance ended (or was blocked) with this outcome.
    Finished(Result<Vec<u8>>),
    /// The instance parked; its table entry will wake it.
    Parked,
}

impl Core {
    /// Runs one instance until it ends, is blocked or parks, and records that.
    pub(super) async fn drive(
        self: &Arc<Self>,
        id: &str,
        erased: Arc<dyn Erased>,
        record: InstanceRecord,
        begin: Begin,
        slot: &Arc<Slot>,
    ) -> DriveEnd {
        let span = tracing::info_span!(
            "durable.run",
            durable.workflow = slot.workflow,
            durable.instance_id = %id,
            durable.resume_count = tracing::field::Empty,
            durable.begin = ?begin,
        );
        self.drive_inner(id, erased, record, begin, slot)
            .instrument(span)
            .await
    }

    async fn drive_inner(
        self: &Arc<Self>,
        id: &str,
        erased: Arc<dyn Erased>,
        mut record: InstanceRecord,
        begin: Begin,
        slot: &Arc<Slot>,
    ) -> DriveEnd {
        let journal = &self.services.journal;
        // Before any body runs: does the recorded history fit this code?
        let checkpoints = match journal.load_checkpoints(id) {
            Ok(c) => c,
            Err(e) => return DriveEnd::Finished(Err(e)),
        };
        let started_patches = match self.admit(id, &record, erased.manifest(), &checkpoints) {
            Ok(patches) => patches,
            Err(e) => {
                let stored = journal.recoveries(id).unwrap_or(0);
                return DriveEnd::Finished(self.end(id, record, stored, slot, Err(e)).await);
            }
        };
        let mut lane = None;
        let recoveries = match begin {
            Begin::Fresh | Begin::Wake => 0,
            Begin::ResumeByHand => 1,
            Begin::Resume(known) => {
                let stored = match known {
                    Some(stored) => stored,
                    None => match journal.recoveries(id) {
                        Ok(stored) => stored,
                        Err(e) => return DriveEnd::Finished(Err(e)),
                    },
                };
                if stored > 0 {
                    // Resumed before without progress: it may be what crashes
                    // the process. Such suspects run one at a time until each
                    // finishes a step, so an innocent instance that was merely
                    // running at the same crashes is not counted with them.
                    lane = Arc::clone(&self.suspects).acquire_owned().await.ok();
                }
                stored.saturating_add(1)
            }
        };
        tracing::Span::current().record("durable.resume_count", recoveries);
        if recoveries > self.config.max_recoveries {
            let error = Error::Instance(crate::error::InstanceError::NeedsAttention {
                instance: id.to_string(),
                reason: format!(
                    "it was resumed {} times in a row without finishing a step (the process may be crashing in it); fix the cause, then call Engine::resume",
                    self.config.max_recoveries
                ),
            });
            return DriveEnd::Finished(
                self.end(id, record, recoveries - 1, slot, Err(error)).await,
            );
        }
        if matches!(begin, Begin::Resume(_) | Begin::ResumeByHand) {
            crate::crash::point("recovery.before_resume");
            record.state = InstanceState::Running;
            self.push_transition(&mut record, TransitionKind::Resumed);
            if let Err(e) = journal.commit_record(id, &record, Some(recoveries)).await {
                return DriveEnd::Finished(Err(e));
            }
            tracing::info!("instance resumed");
        }
        let policy = erased.policy().unwrap_or(self.config.retry);
        slot.signals
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let ctx = Ctx::new(
            id.to_string(),
            slot.workflow,
            Arc::clone(&self.services),
            policy,
            checkpoints,
            recoveries,
            Arc::clone(&slot.signals),
        );
        ctx.hold_lane(lane);
        ctx.set_started_patches(started_patches);
        let clock = &self.services.clock;
        let flow = {
            let mut run = pin!(CatchUnwind::new(&|| erased.run(&ctx, &record.input)));
            let mut aborted = pin!(ctx.aborted());
            std::future::poll_fn(|cx| {
                if let Poll::Ready(error) = aborted.as_mut().poll(cx) {
                    return Poll::Ready(Err(error));
                }
                match run.as_mut().poll(cx) {
                    Poll::Ready(Ok(output)) => Poll::Ready(output.map(Ok)),
                    Poll::Ready(Err(panic)) => Poll::Ready(Err(Error::Instance(
                        crate::error::InstanceError::WorkflowPanicked {
                            instance: id.to_string(),
                            message: panic_message(&*panic),
                        },
                    ))),
                    Poll::Pending => match slot.signals.parkable(clock.now_ms(), PARK_AFTER_MS) {
                        Some(conds) => Poll::Ready(Ok(Err(conds))),
                        None => Poll::Pending,
                    },
                }
            })
            .await
        };
        let outcome = match flow {
            Ok(Err(conds)) => {
                drop(ctx);
                return match self.park(id, conds, slot).await {
                    Ok(()) => DriveEnd::Parked,
                    Err(e) => {
                        DriveEnd::Finished(self.end(id, record, recoveries, slot, Err(e)).await)
                    }
                };
            }
            Ok(Ok(output)) => {
                let left = ctx.unreplayed();
                if left.is_empty() {
                    Ok(output)
                } else {
                    Err(Error::Replay(crate::error::ReplayError::Nondeterminism {
                        instance: id.to_string(),
                        detail: format!(
                            "the workflow finished without reaching recorded step(s) {}",
                            left.join(", ")
                        ),
                    }))
                }
            }
            Err(e) => Err(e),
        };
        let recoveries = ctx.recoveries();
        drop(ctx);
        DriveEnd::Finished(self.end(id, record, recoveries, slot, outcome).await)
    }

    /// Records how the instance ended: completed, blocked (resumable),
    /// failed or cancelled. A cancel that was recorded first wins.
    pub(super) async fn end(
        &self,
        id: &str,
        mut record: InstanceRecord,
        recoveries: u32,
        slot: &Slot,
        outcome: Result<(Vec<u8>, bool)>,
    ) -> Result<Vec<u8>> {
        let mut ended = slot.ended.lock().await;
        if slot.signals.is_cancelled() {
            *ended = true;
            return Err(Error::Instance(crate::error::InstanceError::Cancelled {
                instance: id.to_string(),
            }));
        }
        let result = match outcome {
            Ok((output, is_err)) => {
                record.state = InstanceState::Returned {
                    output: output.clone(),
                    is_err,
                };
                self.push_transition(&mut record, TransitionKind::Completed);
                crate::crash::point("complete.before_write");
                self.services
                    .journal
                    .commit_record(id, &record, None)
                    .await?;
                crate::crash::point("complete.after_write");
                tracing::info!("instance completed");
                Ok(output)
            }
            Err(error) => self.end_with_error(id, record, recoveries, error).await,
        };
        *ended = result.is_ok() || !matches!(&result, Err(e) if e.blocks());
        result
    }

    /// Records that the instance is blocked (resumable) or failed, and returns `error`.
    pub(super) async fn end_with_error(
        &self,
        id: &str,
        mut record: InstanceRecord,
        recoveries: u32,
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
                    return Err(error);
                }
                record.state = state;
                TransitionKind::Incompatible { error: text }
            } else if let Error::Instance(crate::error::InstanceError::Cancelled { .. }) = &error {
                record.state = InstanceState::Cancelled;
                TransitionKind::Cancelled
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
        self.push_transition(&mut record, kind);
        // If the store itself is failing this write fails too; the instance
        // then stays `Running` in the store and resumes at the next open.
        if let Err(write) = self
            .services
            .journal
            .commit_record(id, &record, active)
            .await
        {
            tracing::error!(
                durable.error = %write,
                "the instance's end could not be recorded; it resumes at the next open"
            );
        }
        Err(error)
    }

    /// Appends a transition stamped now, dropping the oldest `Resumed`
    /// entry once the record holds [`MAX_TRANSITIONS`].
    pub(super) fn push_transition(&self, record: &mut InstanceRecord, kind: TransitionKind) {
        if record.transitions.len() >= MAX_TRANSITIONS
            && let Some(i) = record
                .transitions
                .iter()
                .position(|t| t.kind == TransitionKind::Resumed)
        {
            record.transitions.remove(i);
        }
        record.transitions.push(TransitionRecord {
            at_ms: self.services.clock.now_ms(),
            kind,
        });
    }
}
