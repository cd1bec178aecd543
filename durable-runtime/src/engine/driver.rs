//! One run of one instance: resume bookkeeping and the crash-loop guard,
//! replaying the workflow against its checkpoints, and parking (`ending.rs`
//! records how it ended).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use tracing::Instrument;

use crate::backend::{Committed, Lease, Write};
use crate::context::{Ctx, RunStart};
use crate::error::{Error, Result};
use crate::panic::{CatchUnwind, panic_message};
use crate::records::{InstanceRecord, InstanceState, TransitionKind};

use super::Core;
use super::handle::outcome_of;
use super::instances::Slot;
use super::registry::Erased;
use super::scheduler::PARK_AFTER_MS;

/// How an instance task begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Begin {
    /// Just created here, or claimed with no checkpoint stored (see
    /// `ClaimKind::Unstarted`): nothing to resume, no checkpoint to load.
    Fresh,
    /// Forked from another instance: its copied checkpoints replay.
    Forked,
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
    /// The instance parked; its timer or event makes it claimable again.
    Parked,
    /// An awaited event was stored before the instance could park: run it
    /// again at once, with the same lease.
    Rerun,
    /// The lease was lost to another worker: this process stops driving
    /// it, and its end (elsewhere) resolves the handles.
    Lost,
}

/// Whether `error` says the lease was lost.
pub(super) fn lost(error: &Error) -> bool {
    matches!(
        error,
        Error::Instance(crate::error::InstanceError::LeaseLost { .. })
    )
}

impl Core {
    /// Runs one instance until it ends, is blocked or parks, and records that.
    pub(super) async fn drive(
        self: &Arc<Self>,
        id: &str,
        erased: Arc<dyn Erased>,
        mut record: InstanceRecord,
        mut begin: Begin,
        slot: &Arc<Slot>,
        mut lease: Lease,
    ) -> DriveEnd {
        loop {
            let span = tracing::info_span!(
                "durable.run",
                durable.workflow = slot.workflow,
                durable.instance_id = %id,
                durable.resume_count = tracing::field::Empty,
                durable.begin = ?begin,
            );
            let end = self
                .drive_inner(id, Arc::clone(&erased), record.clone(), begin, slot, lease)
                .instrument(span)
                .await;
            match end {
                DriveEnd::Rerun => begin = Begin::Wake,
                DriveEnd::Finished(Err(e)) if lost(&e) => match self.reclaim_cancelled(id).await {
                    // Cancelled with compensations while driven here: this
                    // task claims it again and carries out the cancel.
                    Some(claim) => {
                        *slot.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(claim.lease);
                        (record, lease, begin) = (claim.record, claim.lease, Begin::Wake);
                    }
                    None => return self.after_lost(id).await,
                },
                end => return end,
            }
        }
    }

    /// Claims instance `id` again if its lease was lost to a requested
    /// cancel (see `engine/saga.rs`) and nobody else claimed it since.
    async fn reclaim_cancelled(&self, id: &str) -> Option<crate::backend::Claim> {
        let record = self.services.backend.load(id).await.ok()??;
        if !record.cancel_requested() || record.state != InstanceState::Running {
            return None;
        }
        self.services.backend.claim(id).await.ok()?
    }

    /// What became of instance `id` after this process lost its lease: its
    /// outcome if it ended (a cancel), else [`DriveEnd::Lost`].
    async fn after_lost(&self, id: &str) -> DriveEnd {
        tracing::info!(durable.instance_id = %id, "lease lost; the instance is no longer run here");
        match self.services.backend.load(id).await {
            Ok(Some(record)) => match outcome_of(id, &record, true) {
                Some(outcome) => DriveEnd::Finished(outcome),
                None => DriveEnd::Lost,
            },
            _ => DriveEnd::Lost,
        }
    }

    async fn drive_inner(
        self: &Arc<Self>,
        id: &str,
        erased: Arc<dyn Erased>,
        mut record: InstanceRecord,
        begin: Begin,
        slot: &Arc<Slot>,
        lease: Lease,
    ) -> DriveEnd {
        let backend = &self.services.backend;
        // A child whose parent was cancelled goes with it.
        if self.orphaned(&record).await {
            let error = Error::Instance(crate::error::InstanceError::Cancelled {
                instance: id.to_string(),
            });
            return DriveEnd::Finished(self.end(id, record, 0, lease, Err(error)).await);
        }
        // Before any body runs: does the recorded history fit this code?
        // (An instance this task just created has none: no read.)
        let checkpoints = match begin {
            Begin::Fresh => Vec::new(),
            _ => match backend.checkpoints(id).await {
                Ok(c) => c,
                Err(e) => return DriveEnd::Finished(Err(e)),
            },
        };
        let admitted = self
            .admit(id, &record, erased.manifest(), &checkpoints)
            .await;
        let started_patches = match admitted {
            Ok(patches) => patches,
            Err(e) => {
                let stored = match begin {
                    Begin::Resume(Some(stored)) => stored,
                    _ => 0,
                };
                return DriveEnd::Finished(self.end(id, record, stored, lease, Err(e)).await);
            }
        };
        let mut lane = None;
        let recoveries = match begin {
            Begin::Fresh | Begin::Forked | Begin::Wake => 0,
            Begin::ResumeByHand => 1,
            Begin::Resume(known) => {
                let stored = known.unwrap_or(0);
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
                self.end(id, record, recoveries - 1, lease, Err(error))
                    .await,
            );
        }
        if matches!(begin, Begin::Resume(_) | Begin::ResumeByHand) {
            crate::crash::point("recovery.before_resume");
            record.state = InstanceState::Running;
            let write = Write::Record {
                record: record.clone(),
                active: Some(recoveries),
                appended: Some(self.transition(TransitionKind::Resumed)),
            };
            if let Err(e) = backend.commit(id, lease, write).await {
                return DriveEnd::Finished(Err(e));
            }
            tracing::info!("instance resumed");
        }
        slot.signals.paused.store(
            record.paused_since().is_some(),
            std::sync::atomic::Ordering::SeqCst,
        );
        let policy = erased.policy().unwrap_or(self.config.retry);
        slot.signals
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // A requested cancel (see `engine/saga.rs`): this run stops at the
        // first unfinished site and compensates.
        let cancel_run = record.cancel_requested();
        if cancel_run {
            slot.signals
                .cancelled
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let ctx = Ctx::new(
            id.to_string(),
            slot.workflow,
            Arc::clone(&self.services),
            Arc::clone(&slot.signals),
            RunStart {
                policy,
                checkpoints,
                recoveries,
                lease,
            },
        );
        ctx.hold_lane(lane);
        ctx.set_started_patches(started_patches);
        let clock = &self.services.clock;
        let deadline = record.deadline_ms();
        let flow = {
            let mut run = pin!(CatchUnwind::new(&|| erased.run(&ctx, &record.input)));
            let mut aborted = pin!(ctx.aborted());
            // The whole-workflow deadline: when it passes, the run stops
            // where it stands and the instance is cancelled.
            let mut expiry = deadline.map(|at| clock.sleep_until(at));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(error) = aborted.as_mut().poll(cx) {
                    return Poll::Ready(Err(error));
                }
                if let (Some(expiry), Some(at)) = (expiry.as_mut(), deadline)
                    && expiry.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(Error::Instance(
                        crate::error::InstanceError::DeadlinePassed {
                            instance: id.to_string(),
                            deadline_ms: at,
                        },
                    )));
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
            Ok(Err(mut conds)) => {
                drop(ctx);
                if let Some(at) = deadline {
                    // Parked, it is woken at its deadline too (to be cancelled).
                    conds.push(crate::records::WaitCond {
                        name: "durable.deadline".into(),
                        occurrence: 0,
                        deadline_ms: Some(at),
                        event_type: None,
                    });
                }
                return match self.park(id, conds, slot, lease).await {
                    Ok(Committed::Written) => {
                        // Cancelled while it parked: woken to compensate.
                        if slot.signals.cancel_here.load(Ordering::SeqCst) {
                            self.wake_cancelled(id).await;
                        }
                        DriveEnd::Parked
                    }
                    Ok(Committed::EventFirst) => DriveEnd::Rerun,
                    Err(e) if lost(&e) => DriveEnd::Finished(Err(e)),
                    Err(e) => {
                        DriveEnd::Finished(self.end(id, record, recoveries, lease, Err(e)).await)
                    }
                };
            }
            Ok(Ok(output)) => {
                // A workflow that returned `Err` is compensated first.
                let compensated = match output.1 {
                    true => {
                        let cause = "the workflow returned an error";
                        self.compensate(id, &ctx, &record, lease, cause).await
                    }
                    false => Ok(()),
                };
                let left = ctx.unreplayed();
                if let Err(stopped) = compensated {
                    Err(stopped)
                } else if left.is_empty() {
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
            Err(e) => {
                // A cancel that lets this run compensate where it stands
                // counts as a run that started cancelled.
                let here = slot.signals.cancel_here.load(Ordering::SeqCst);
                let compensating = (e, cancel_run || here, erased.compensates());
                Err(self
                    .after_error(id, &ctx, &record, lease, compensating)
                    .await)
            }
        };
        let recoveries = ctx.recoveries();
        drop(ctx);
        DriveEnd::Finished(self.end(id, record, recoveries, lease, outcome).await)
    }
}
