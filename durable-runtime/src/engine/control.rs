//! The operator's actions on one instance, durable and recorded in its
//! history: retry, cancel, fork, pause and unpause; and purging finished
//! instances. Each validates the id, then the engine's parts decide.

use crate::error::Result;
use crate::ids::validate_id;

use super::Engine;
#[cfg(doc)]
use super::EngineBuilder;
#[cfg(doc)]
use crate::inspect::Status;

impl Engine {
    /// Sets a [`Status::Failed`] or [`Status::Blocked`] instance (or one
    /// that [needs attention](Status::NeedsAttention), or that completed
    /// with an error) going again from its failed step, durably: when this
    /// returns, the instance is `Running` in the store and runs (here if
    /// this engine has its workflow, else in the next engine that opens the
    /// store with it). The failed step's checkpoint is set aside: taken out
    /// of the checkpoints so the step runs again, and kept in the history
    /// as a [`TransitionKind::Retried`](crate::TransitionKind::Retried)
    /// transition with who did it (`$DURABLE_OPERATOR` or `$USER`, and the
    /// process id), when, and how the step had failed. The steps before it
    /// replay from their checkpoints.
    ///
    /// Idempotent: retrying an instance that is running again already does
    /// nothing.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// use durable_runtime::Status;
    ///
    /// if let Status::Failed { reason } = engine.status("order-42").await? {
    ///     println!("retrying order-42, which failed: {reason}");
    ///     engine.retry("order-42").await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Errors: [`UsageError::NotFound`](crate::UsageError::NotFound),
    /// [`UsageError::NotRetryable`](crate::UsageError::NotRetryable) for a
    /// completed or cancelled instance (resume a cancelled one with
    /// [`resume`](Self::resume)).
    pub async fn retry(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        self.core.retry(id).await
    }

    /// Cancels instance `id`, durably: no new step starts after this
    /// returns, a step running now finishes, and the instance ends
    /// [`Status::Cancelled`] (its handles return
    /// [`InstanceError::Cancelled`](crate::InstanceError::Cancelled)). A parked instance is
    /// cancelled at once, without waiting for its timer.
    ///
    /// Errors: [`UsageError::NotFound`](crate::UsageError::NotFound),
    /// [`UsageError::InstanceFinished`](crate::UsageError::InstanceFinished).
    pub async fn cancel(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        self.core.cancel(id).await
    }

    /// Forks instance `id` from its step `from_step` as a new instance
    /// `new_id`, durably: the new instance has the same workflow (and
    /// version) and input, replays the checkpoints `id` recorded before the
    /// first occurrence of `from_step` (in history order), and runs the rest
    /// for real, here if this engine has its workflow. The source is not
    /// changed. The new instance's history starts with
    /// [`TransitionKind::Forked`](crate::TransitionKind::Forked) (from, step,
    /// who). Forking again with the same arguments does nothing.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// // Run order-42 again from its "charge" step, keeping what came before.
    /// engine.fork("order-42", "charge", "order-42-retry-1").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Errors: [`UsageError::NotFound`](crate::UsageError::NotFound),
    /// [`UsageError::NoSuchStep`](crate::UsageError::NoSuchStep) when `id`
    /// recorded no such step,
    /// [`UsageError::IdConflict`](crate::UsageError::IdConflict) when
    /// `new_id` names another instance.
    pub async fn fork(&self, id: &str, from_step: &str, new_id: &str) -> Result<()> {
        validate_id(id)?;
        validate_id(new_id)?;
        self.core.fork(id, from_step, new_id).await
    }

    /// Pauses instance `id`, durably: after this returns no new step starts
    /// (a step running now finishes and is checkpointed), a parked instance
    /// stays parked (its timer and events are not acted on), and nothing
    /// resumes it at the next open, until [`unpause`](Self::unpause).
    /// [`status`](Self::status) shows [`Status::Paused`]; the history has a
    /// [`TransitionKind::Paused`](crate::TransitionKind::Paused) with who
    /// did it and when. Events sent meanwhile are stored. Pausing a paused
    /// instance does nothing.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// engine.pause("order-42").await?;
    /// // .. fix what the next step would break ..
    /// engine.unpause("order-42").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Errors: [`UsageError::NotFound`](crate::UsageError::NotFound),
    /// [`UsageError::InstanceFinished`](crate::UsageError::InstanceFinished).
    pub async fn pause(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        self.core.set_paused(id, true).await
    }

    /// Unpauses instance `id`, durably: it goes on where it stood (a timer
    /// that came due meanwhile fires at once). Unpausing an instance that is
    /// not paused does nothing. Errors as for [`pause`](Self::pause).
    pub async fn unpause(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        self.core.set_paused(id, false).await
    }

    /// Deletes every finished instance (completed, failed, cancelled) that
    /// finished before `finished_before`: its record, checkpoints, events
    /// and index entries, so the store stops growing with old history.
    /// Unfinished instances are never touched. Returns how many were
    /// deleted. Each instance goes in one atomic write: after a crash it is
    /// either all there or all gone. [`EngineBuilder::retention`](super::EngineBuilder::retention) does this
    /// in the background.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// use std::time::{Duration, SystemTime};
    ///
    /// let month_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    /// let purged = engine.purge(month_ago).await?;
    /// println!("purged {purged} instances");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn purge(&self, finished_before: std::time::SystemTime) -> Result<u64> {
        self.core.purge(crate::time::to_ms(finished_before)).await
    }
}
