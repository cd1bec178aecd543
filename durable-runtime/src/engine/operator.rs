//! Operator actions on one instance, decided by the backend under the
//! instance's lock and recorded in its history as transitions (who, when,
//! what): `retry` of a failed or blocked instance from its failed step, and
//! the reopening of a cancelled one by `resume`.

use std::sync::Arc;

use crate::error::{Error, Result, UsageError};
use crate::records::{
    CheckpointRecord, CheckpointState, InstanceRecord, InstanceState, SetAside, TransitionKind,
};

use super::Core;

/// Who performs an operator action from this process: `$DURABLE_OPERATOR`,
/// else `$USER`, with the process id.
pub(super) fn operator() -> String {
    let name = std::env::var("DURABLE_OPERATOR")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{name} (pid {})", std::process::id())
}

/// The status name of a stored state, for messages and history.
pub(super) fn state_name(state: &InstanceState) -> &'static str {
    match state {
        InstanceState::Running => "running",
        InstanceState::Completed { .. } | InstanceState::Returned { is_err: false, .. } => {
            "completed"
        }
        InstanceState::Returned { is_err: true, .. } => "completed with an error",
        InstanceState::Failed { .. } => "failed",
        InstanceState::Blocked { .. } => "blocked",
        InstanceState::NeedsAttention { .. } => "needs attention",
        InstanceState::Cancelled => "cancelled",
        InstanceState::Incompatible { .. } => "incompatible",
    }
}

/// The checkpoint that failed the instance: the last started step whose
/// outcome is a final failure.
fn failed_step(checkpoints: &[CheckpointRecord]) -> Option<&CheckpointRecord> {
    checkpoints
        .iter()
        .filter(|c| {
            matches!(
                c.state,
                CheckpointState::Done { ok: false, .. }
                    | CheckpointState::Panicked { .. }
                    | CheckpointState::Expired { .. }
                    | CheckpointState::TooLarge { .. }
            )
        })
        .max_by_key(|c| c.seq)
}

/// What a set-aside checkpoint keeps in the history.
fn set_aside_of(c: &CheckpointRecord) -> SetAside {
    let (finished_at_ms, outcome) = match &c.state {
        CheckpointState::Done {
            finished_at_ms,
            error_text,
            ..
        } => (
            Some(*finished_at_ms),
            format!("error: {}", error_text.as_deref().unwrap_or("")),
        ),
        CheckpointState::Panicked {
            finished_at_ms,
            message,
        } => (Some(*finished_at_ms), format!("panicked: {message}")),
        CheckpointState::Expired {
            finished_at_ms,
            timeout_ms,
        } => (
            Some(*finished_at_ms),
            format!("timed out after {timeout_ms} ms"),
        ),
        CheckpointState::TooLarge {
            finished_at_ms,
            size,
            limit,
        } => (
            Some(*finished_at_ms),
            format!("outcome of {size} bytes over the limit of {limit}"),
        ),
        other => (None, format!("{other:?}")),
    };
    SetAside {
        name: c.name.clone(),
        occurrence: c.occurrence,
        key: c.key.as_ref().map(|(_, text)| text.clone()),
        attempts: c.attempts,
        started_at_ms: c.started_at_ms,
        finished_at_ms,
        outcome,
    }
}

impl Core {
    /// Sets failed or blocked instance `id` going again from its failed
    /// step; see `Engine::retry`.
    pub(super) async fn retry(self: &Arc<Self>, id: &str) -> Result<()> {
        let by = operator();
        let decide = |mut record: InstanceRecord, checkpoints: Vec<CheckpointRecord>| {
            match &record.state {
                // Retried already (or never stopped): nothing to do.
                InstanceState::Running => return Ok(None),
                InstanceState::Failed { .. }
                | InstanceState::Blocked { .. }
                | InstanceState::NeedsAttention { .. }
                | InstanceState::Returned { is_err: true, .. } => {}
                other => {
                    return Err(Error::Usage(UsageError::NotRetryable {
                        instance: id.to_string(),
                        status: state_name(other),
                    }));
                }
            }
            let failed = failed_step(&checkpoints).cloned();
            record.state = InstanceState::Running;
            self.push_transition(
                &mut record,
                TransitionKind::Retried {
                    by: by.clone(),
                    set_aside: failed.as_ref().map(set_aside_of),
                },
            );
            Ok(Some((record, failed.into_iter().collect())))
        };
        let wrote = self.services.backend.reopen(id, &decide).await?;
        if wrote {
            tracing::info!(durable.instance_id = %id, durable.by = %by, "instance retried");
        }
        Ok(())
    }

    /// Reopens cancelled instance `id` (its checkpoints kept): it runs again
    /// from where it stood; see `Engine::resume`. `Ok(false)` if it is not
    /// cancelled.
    pub(super) async fn reopen_cancelled(self: &Arc<Self>, id: &str) -> Result<bool> {
        let by = operator();
        let decide = |mut record: InstanceRecord, _: Vec<CheckpointRecord>| {
            if record.state != InstanceState::Cancelled {
                return Ok(None);
            }
            record.state = InstanceState::Running;
            self.push_transition(
                &mut record,
                TransitionKind::Reopened {
                    by: by.clone(),
                    from: "cancelled".into(),
                },
            );
            Ok(Some((record, Vec::new())))
        };
        let wrote = self.services.backend.reopen(id, &decide).await?;
        if wrote {
            tracing::info!(durable.instance_id = %id, durable.by = %by, "cancelled instance resumed");
        }
        Ok(wrote)
    }
}

impl Core {
    /// Forks instance `id` from step `step` as `new_id`; see `Engine::fork`.
    pub(super) async fn fork(self: &Arc<Self>, id: &str, step: &str, new_id: &str) -> Result<()> {
        let backend = &self.services.backend;
        let source = backend
            .load(id)
            .await?
            .ok_or_else(|| Error::Usage(UsageError::NotFound { id: id.to_string() }))?;
        let checkpoints = backend.checkpoints(id).await?;
        let cut = checkpoints
            .iter()
            .filter(|c| c.name == step)
            .map(|c| c.seq)
            .min()
            .ok_or_else(|| {
                Error::Usage(UsageError::NoSuchStep {
                    instance: id.to_string(),
                    step: step.to_string(),
                })
            })?;
        // Only what the source recorded before the step, and only finished
        // outcomes: a step still retrying there starts afresh here.
        let kept: Vec<CheckpointRecord> = checkpoints
            .into_iter()
            .filter(|c| c.seq < cut && !matches!(c.state, CheckpointState::Retrying { .. }))
            .collect();
        let by = operator();
        let now = self.services.clock.now_ms();
        let record = InstanceRecord {
            workflow: source.workflow.clone(),
            version: source.version,
            manifest: source.manifest,
            input: source.input.clone(),
            state: InstanceState::Running,
            created_at_ms: now,
            transitions: vec![
                crate::records::TransitionRecord {
                    at_ms: now,
                    kind: TransitionKind::Started,
                },
                crate::records::TransitionRecord {
                    at_ms: now,
                    kind: TransitionKind::Forked {
                        from: id.to_string(),
                        step: step.to_string(),
                        by: by.clone(),
                    },
                },
            ],
        };
        let lease = match backend.create_with(new_id, &record, &kept).await? {
            crate::backend::Created::New(lease) => lease,
            crate::backend::Created::Exists(existing) => {
                // The same fork again is the same fork.
                let same = existing.transitions.iter().any(|t| {
                    matches!(&t.kind, TransitionKind::Forked { from, step: s, .. } if from == id && s == step)
                });
                return if same {
                    Ok(())
                } else {
                    Err(Error::Usage(UsageError::IdConflict {
                        id: new_id.to_string(),
                        existing: format!(
                            "workflow {:?}, not a fork of {id:?} from {step:?}",
                            existing.workflow
                        ),
                    }))
                };
            }
            crate::backend::Created::Unclaimed => {
                return Err(Error::Store(crate::error::StoreError::io_message(
                    "fork an instance",
                    format!("instance {new_id:?} was created without an owner"),
                )));
            }
        };
        tracing::info!(durable.instance_id = %new_id, durable.from = %id, durable.step = %step, durable.by = %by, "instance forked");
        crate::metrics::instance_started(&record.workflow);
        match self.registry.for_record(&record) {
            Some((workflow, erased)) => {
                let slot = super::instances::Slot::new(workflow, record.input.clone(), true);
                self.instances
                    .lock()
                    .insert(new_id.to_string(), Arc::clone(&slot));
                Arc::clone(self).spawn(
                    new_id.to_string(),
                    erased,
                    record,
                    super::driver::Begin::Forked,
                    slot,
                    lease,
                );
            }
            // Not run here: it runs in the next engine that opens the
            // store with its workflow.
            None => backend.release(new_id, lease).await?,
        }
        Ok(())
    }

    /// Pauses (`paused`) or unpauses instance `id`; see `Engine::pause`.
    pub(super) async fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let by = operator();
        let update = |mut record: InstanceRecord| {
            if record.paused_since().is_some() == paused {
                return None;
            }
            let kind = if paused {
                TransitionKind::Paused { by: by.clone() }
            } else {
                TransitionKind::Unpaused { by: by.clone() }
            };
            self.push_transition(&mut record, kind);
            Some(record)
        };
        let wrote = self
            .services
            .backend
            .set_paused(id, paused, &update)
            .await?;
        // An owner in this process stops before its next step at once (the
        // hint follows too, for owners elsewhere).
        if let Some(slot) = self.instances.get(id) {
            slot.signals
                .paused
                .store(paused, std::sync::atomic::Ordering::SeqCst);
            slot.signals.ring();
        }
        if wrote {
            tracing::info!(durable.instance_id = %id, durable.by = %by, durable.paused = paused, "instance paused or unpaused");
        }
        Ok(())
    }

    /// Purges the instances that finished before `before_ms`; see
    /// `Engine::purge`.
    pub(super) async fn purge(&self, before_ms: u64) -> Result<u64> {
        let purged = self.services.backend.purge(before_ms).await?;
        if purged > 0 {
            tracing::info!(durable.purged = purged, "finished instances purged");
        }
        Ok(purged)
    }

    /// Purges instances finished for longer than `age`, now and then every
    /// `age / 4` (between a second and an hour) on the engine's clock,
    /// until the engine is gone.
    pub(super) async fn retention_loop(core: std::sync::Weak<Core>, age: std::time::Duration) {
        let every = crate::time::duration_ms(age / 4).clamp(1_000, 3_600_000);
        loop {
            let next = {
                let Some(core) = core.upgrade() else { return };
                let now = core.services.clock.now_ms();
                let cutoff = now.saturating_sub(crate::time::duration_ms(age));
                if let Err(e) = core.purge(cutoff).await {
                    tracing::warn!(durable.error = %e, "purge failed; trying again later");
                }
                (Arc::clone(&core.services.clock), now.saturating_add(every))
            };
            next.0.sleep_until(next.1).await;
        }
    }
}
