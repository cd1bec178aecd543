//! Enqueueing from a workflow ([`Ctx::enqueue`]): a step of the reserved
//! name `durable::enqueue`, numbered by occurrence, whose outcome is the id
//! it enqueued. The instance is enqueued first (create-if-absent: an
//! enqueue repeated after a crash finds it), then the checkpoint is
//! written; a replay finds the checkpoint and enqueues nothing.

use crate::backend::{Queued, Write};
use crate::context::Ctx;
use crate::error::{Error, ReplayError, Result, UsageError};
use crate::ids::{check_conflict, validate_id};
use crate::records::{
    CheckpointRecord, CheckpointState, InstanceRecord, InstanceState, ReservedSite, TransitionKind,
    TransitionRecord,
};
use crate::workflow::{IntoWorkflow, Workflow};

use super::{In, registry};
use crate::queue::EnqueueOptions;

/// The reserved step name of [`Ctx::enqueue`].
const ENQUEUE: &str = "durable::enqueue";

impl Ctx {
    /// Enqueues instance `id` of `workflow` on queue `queue` from a
    /// workflow, replay-safe: it is checkpointed like a step, so a replay
    /// (after a crash or restart) does not enqueue it again, and an enqueue
    /// cut short by a crash finds the instance it already wrote (ids are
    /// idempotency keys). Returns the id. The queue's limits are those of
    /// the engines that declared it (its instances wait until one of them
    /// dispatches them).
    ///
    /// Errors, with no checkpoint written: an invalid id or queue name, an
    /// input that does not encode or is too large,
    /// [`UsageError::IdConflict`] for an existing instance with another
    /// workflow or input, [`UsageError::Duplicate`] for a held
    /// deduplication id.
    ///
    /// ```
    /// # use durable_runtime::{Ctx, EnqueueOptions, IntoWorkflow, Workflow};
    /// # async fn demo<W: IntoWorkflow>(ctx: &Ctx, send: W) -> durable_runtime::Result<()>
    /// # where W::Workflow: Workflow<Input = String> {
    /// let options = EnqueueOptions::new().partition("tenant-7");
    /// ctx.enqueue("emails", send, "welcome-42", "ada@example.com".to_string(), options)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enqueue<I: IntoWorkflow>(
        &self,
        queue: &str,
        workflow: I,
        id: impl Into<String>,
        input: In<I>,
        options: EnqueueOptions,
    ) -> Result<String> {
        type W<I> = <I as IntoWorkflow>::Workflow;
        let id = id.into();
        let occurrence = self.next_occurrence(ENQUEUE);
        let seq = self.next_seq();
        match self.take_checkpoint(ENQUEUE, occurrence) {
            Some(CheckpointRecord {
                state: CheckpointState::Done { outcome, .. },
                ..
            }) => {
                if crate::codec::decode::<String>(&outcome).is_ok_and(|recorded| recorded == id) {
                    return Ok(id);
                }
                let error = Error::Replay(ReplayError::Nondeterminism {
                    instance: self.id.clone(),
                    detail: format!(
                        "{ENQUEUE:?} (occurrence {occurrence}) was not recorded for instance {id:?}"
                    ),
                });
                self.abort(error).await
            }
            Some(other) => {
                let error = self.diverged(ENQUEUE, occurrence, &other.state, "an enqueue");
                self.abort(error).await
            }
            None => {}
        }
        validate_id(&id)?;
        if queue.is_empty() || queue.len() > 200 {
            return Err(Error::Usage(UsageError::InvalidQueue {
                queue: queue.to_string(),
                reason: "the name must be 1 to 200 bytes long".into(),
            }));
        }
        let input = self.services.encode_value(&id, "input", &input)?;
        let (name, erased) = registry::entry(workflow.into_workflow());
        if self.services.backend.shared() {
            self.services
                .backend
                .store_manifests(&[&erased.manifest().0])
                .await?;
        }
        let now = self.now_ms();
        let entry = options.entry(queue, now);
        let deadline = W::<I>::TIMEOUT_MS.map(|ms| now.saturating_add(ms));
        let record = InstanceRecord {
            workflow: name.to_string(),
            version: erased.version(),
            manifest: erased.manifest().1,
            input,
            state: InstanceState::Running,
            created_at_ms: now,
            transitions: std::iter::once(TransitionKind::Started)
                .chain(deadline.map(|at_ms| TransitionKind::Deadline { at_ms }))
                .chain(std::iter::once(TransitionKind::Enqueued(entry.clone())))
                .map(|kind| TransitionRecord { at_ms: now, kind })
                .collect(),
        };
        let items = [(id.clone(), record)];
        let answer = {
            let _busy = self.signals.busy();
            self.services.backend.enqueue_many(&items).await?
        };
        match answer.into_iter().next() {
            Some(Queued::New) => {}
            Some(Queued::Exists(existing)) => check_conflict(
                &id,
                name,
                &items[0].1.input,
                &existing.workflow,
                &existing.input,
            )?,
            Some(Queued::Duplicate(existing)) => {
                return Err(Error::Usage(UsageError::Duplicate {
                    queue: queue.to_string(),
                    dedup: entry.dedup.unwrap_or_default(),
                    existing,
                }));
            }
            None => {}
        }
        let outcome = crate::codec::encode(&id).map_err(|reason| {
            Error::Replay(ReplayError::Encode {
                instance: self.id.clone(),
                what: "an enqueued id".into(),
                reason,
            })
        })?;
        let now = self.now_ms();
        let site = ReservedSite {
            name: ENQUEUE,
            occurrence,
            key: None,
            seq,
            started_at_ms: now,
        };
        let record = CheckpointRecord::reserved(site, outcome, true, None, now);
        let written = {
            let _busy = self.signals.busy();
            self.services
                .backend
                .commit(
                    &self.id,
                    self.lease,
                    Write::Checkpoint {
                        record,
                        progress: true,
                    },
                )
                .await
        };
        if let Err(error) = written {
            self.abort(error).await
        }
        Ok(id)
    }
}
