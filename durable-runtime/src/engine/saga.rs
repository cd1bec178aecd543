//! The engine's side of saga compensation (see `crate::saga`): running
//! an instance's compensations when it fails for good, and a cancel that
//! lets the instance compensate before it ends cancelled.
//!
//! A cancel of an instance whose workflow has compensations does not end
//! it at once: under the instance's lock it records
//! [`TransitionKind::CancelRequested`], moves the epoch (the owner's later
//! writes are refused) and leaves the instance unowned and runnable. The
//! next run (in any process that registers the workflow) starts cancelled:
//! it replays the finished steps, which registers their compensations
//! again, stops at the first unfinished site, runs the compensations in
//! reverse order (each checkpointed), and records `Cancelled`.
//!
//! When the owner runs the instance in the cancelling process, the cancel
//! keeps the epoch instead (`cancel_here`): the step it runs is
//! checkpointed and compensated with the others, by that very run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::{Lease, Write};
use crate::context::Ctx;
use crate::error::{Error, InstanceError, Result};
use crate::records::{InstanceRecord, InstanceState, TransitionKind};

use super::Core;

impl Core {
    /// Cancels `id` by letting it compensate first, if its workflow has
    /// compensations and this process registers it. `Ok(false)`: not such
    /// an instance, the caller cancels it at once.
    pub(super) async fn cancel_compensating(self: &Arc<Self>, id: &str) -> Result<bool> {
        let Some(record) = self.services.backend.load(id).await? else {
            return Ok(false);
        };
        let compensates = self
            .registry
            .for_record(&record)
            .is_some_and(|(_, erased)| erased.compensates());
        if !compensates {
            return Ok(false);
        }
        let by = super::operator::operator();
        if self.cancel_here(id, &record, &by).await? {
            return Ok(true);
        }
        let fallback = AtomicBool::new(false);
        let decide = |mut record: InstanceRecord, _| {
            crate::backend::embedded::ensure_unfinished(id, &record.state)?;
            if record.cancel_requested() {
                // Cancelled already: it is compensating.
                return Ok(None);
            }
            if record.state != InstanceState::Running {
                // Blocked, set aside: not run again; cancelled at once.
                fallback.store(true, Ordering::SeqCst);
                return Ok(None);
            }
            self.push_transition(
                &mut record,
                TransitionKind::CancelRequested { by: by.clone() },
            );
            Ok(Some((record, Vec::new())))
        };
        let wrote = self.services.backend.reopen(id, &decide).await?;
        if fallback.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if wrote {
            tracing::info!(durable.instance_id = %id, durable.by = %by, "cancel requested; the instance compensates");
            // An owner in this process stops before its next step; its run
            // then hands over to one that starts cancelled.
            if let Some(slot) = self.instances.get(id) {
                slot.signals.cancelled.store(true, Ordering::SeqCst);
                slot.signals.ring();
            }
        }
        Ok(true)
    }

    /// A cancel of instance `id` whose owner runs it in this process (not
    /// paused): records `CancelRequested` under the instance's lock without
    /// moving its epoch (the record is written as an unpause is: the
    /// instance is not paused), then tells the owner. The step it runs
    /// finishes and is checkpointed, the next site sees the cancel, and the
    /// run compensates every completed step, that one included, before it
    /// records `Cancelled`. A run that parked meanwhile is woken for it.
    /// `Ok(false)`: not such an instance (the caller takes the other path).
    async fn cancel_here(&self, id: &str, record: &InstanceRecord, by: &str) -> Result<bool> {
        let Some(slot) = self.instances.get(id) else {
            return Ok(false);
        };
        let open = |record: &InstanceRecord| {
            record.state == InstanceState::Running
                && record.paused_since().is_none()
                && !record.cancel_requested()
        };
        if !slot.driving.active() || !open(record) {
            return Ok(false);
        }
        slot.signals.cancel_here.store(true, Ordering::SeqCst);
        let update = |mut record: InstanceRecord| {
            if !open(&record) {
                return None;
            }
            self.push_transition(
                &mut record,
                TransitionKind::CancelRequested { by: by.to_string() },
            );
            Some(record)
        };
        let wrote = match self.services.backend.set_paused(id, false, &update).await {
            Ok(wrote) => wrote,
            Err(e) => {
                slot.signals.cancel_here.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        if !wrote {
            slot.signals.cancel_here.store(false, Ordering::SeqCst);
            return Ok(false);
        }
        tracing::info!(durable.instance_id = %id, durable.by = %by, "cancel requested; the instance compensates where it stands");
        slot.signals.cancelled.store(true, Ordering::SeqCst);
        slot.signals.ring();
        if !slot.driving.active() {
            self.wake_cancelled(id).await;
        }
        Ok(true)
    }

    /// Wakes parked instance `id` whose cancel was requested, so that a run
    /// starts cancelled and compensates (its epoch moves: nobody owns it).
    pub(super) async fn wake_cancelled(&self, id: &str) {
        let decide = |record: InstanceRecord, _| {
            if record.cancel_requested() && record.state == InstanceState::Running {
                Ok(Some((record, Vec::new())))
            } else {
                Ok(None)
            }
        };
        if self
            .services
            .backend
            .park_of(id)
            .await
            .is_ok_and(|p| p.is_some())
            && let Err(e) = self.services.backend.reopen(id, &decide).await
        {
            tracing::warn!(durable.instance_id = %id, durable.error = %e, "could not wake a cancelled instance; it compensates when it next wakes");
        }
    }

    /// Runs the compensations `ctx` registered, because the instance stops
    /// with `cause`, and records how that went in its history (durably,
    /// before the end is written). `Err`: the chain stopped
    /// ([`InstanceError::CompensationFailed`]) or could not be written.
    pub(super) async fn compensate(
        &self,
        id: &str,
        ctx: &Ctx,
        record: &InstanceRecord,
        lease: Lease,
        cause: &str,
    ) -> Result<()> {
        if !ctx.has_compensations() {
            return Ok(());
        }
        tracing::info!(durable.instance_id = %id, durable.cause = %cause, "compensating");
        let result = ctx.compensate(cause).await;
        let kind = match &result {
            Ok(count) => TransitionKind::Compensated { count: *count },
            Err(Error::Instance(InstanceError::CompensationFailed {
                step, at, error, ..
            })) => TransitionKind::CompensationFailed {
                step: step.clone(),
                at: at.clone(),
                error: error.clone(),
            },
            Err(other) => return Err(other.clone()),
        };
        let mut record = record.clone();
        record.state = InstanceState::Running;
        let write = Write::Record {
            record,
            active: Some(ctx.recoveries()),
            appended: Some(self.transition(kind)),
        };
        self.services.backend.commit(id, lease, write).await?;
        result.map(|_| ())
    }

    /// How a run that ended with `error` ends, compensating first when the
    /// instance failed for good. `cancel_run`: the run started cancelled
    /// (a requested cancel it carries out). A cancel that reached a run
    /// that did not start cancelled hands over: the run ends as lost, and
    /// the run that claims it next compensates.
    pub(super) async fn after_error(
        &self,
        id: &str,
        ctx: &Ctx,
        record: &InstanceRecord,
        lease: Lease,
        (error, cancel_run, compensating_workflow): (Error, bool, bool),
    ) -> Error {
        let cancelled = matches!(error, Error::Instance(InstanceError::Cancelled { .. }));
        if cancelled && !cancel_run && compensating_workflow {
            return Error::Instance(InstanceError::LeaseLost {
                instance: id.to_string(),
                epoch: lease.epoch,
            });
        }
        if !crate::saga::compensates(&error) {
            return error;
        }
        match self
            .compensate(id, ctx, record, lease, &error.to_string())
            .await
        {
            Ok(()) => error,
            Err(stopped) => stopped,
        }
    }
}
