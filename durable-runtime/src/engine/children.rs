//! Child workflows, the engine's side: starting (or attaching to) a child
//! for its parent's [`Ctx::start_child`](crate::Ctx::start_child), and
//! cancelling a parent's children with it.
//!
//! A child is an instance like any other, created with create-if-absent
//! under an id its parent chose (or derived), with a `ChildOf` transition
//! naming the parent. The parent's `start_child` checkpoint names the
//! child, so a replay attaches instead of starting it again; the parent's
//! checkpoints are where its children are found when it is cancelled.
//! Cancellation reaches a child two ways: the cancel of the parent cancels
//! its unfinished children at once (recursively), and a child whose parent
//! was cancelled is cancelled when it is next claimed to run (the cascade
//! cannot be lost to a crash between the two cancels).

use std::sync::{Arc, Weak};

use crate::backend::BoxFuture;
use crate::error::{Error, InstanceError, Result, UsageError};
use crate::records::{CHILD_RESULT, EventRecord, InstanceRecord, InstanceState, children_of};
use crate::services::{ChildStart, Ended, Starter};

use super::Core;
use super::instances::{Birth, Run};

/// The engine as an instance's [`Starter`] (holds it weakly: the engine's
/// services outlive nothing of it).
pub(super) struct CoreStarter(pub Weak<Core>);

impl Starter for CoreStarter {
    fn start_child(&self, child: ChildStart) -> BoxFuture<'_, Result<Ended>> {
        Box::pin(async move {
            let Some(core) = self.0.upgrade() else {
                return Err(Error::Instance(InstanceError::ShutDown {
                    instance: child.parent,
                }));
            };
            core.start_child(child).await
        })
    }
}

impl Core {
    /// Starts `child` here if this process registers its workflow, else
    /// (on a store other processes share) records it for the workers that
    /// do; attaches if it exists.
    async fn start_child(self: Arc<Self>, child: ChildStart) -> Result<Ended> {
        let ChildStart {
            workflow,
            version,
            type_id,
            erase,
            id,
            input,
            parent,
            cascade,
        } = child;
        let (erased, here) = match self.registry.get_by(workflow, version, type_id) {
            Some(erased) => (erased, true),
            None if self.services.backend.shared() => {
                let erased = match erase().downcast::<Arc<dyn super::registry::Erased>>() {
                    Ok(erased) => *erased,
                    // `Ctx::start_child` erases with `engine::erase`.
                    Err(_) => {
                        return Err(Error::Usage(UsageError::NotRegistered {
                            workflow: workflow.to_string(),
                        }));
                    }
                };
                self.services
                    .backend
                    .store_manifests(&[&erased.manifest().0])
                    .await?;
                (erased, false)
            }
            None => {
                return Err(Error::Usage(UsageError::NotRegistered {
                    workflow: workflow.to_string(),
                }));
            }
        };
        let birth = Birth {
            parent: Some((parent, cascade)),
            ..Birth::own(&*erased, self.services.clock.now_ms())
        };
        let run = Run {
            manual: false,
            here,
        };
        self.start_or_attach(workflow, erased, id, input, run, birth)
            .await
    }

    /// Cancels the unfinished children of cancelled instance `id` that
    /// were started to go with it, and theirs, depth first. Children that
    /// finished meanwhile are skipped; errors are logged (a child whose
    /// cancel is lost here is cancelled when it is next claimed).
    pub(super) async fn cancel_children(&self, id: &str) {
        let mut stack = vec![id.to_string()];
        while let Some(parent) = stack.pop() {
            let checkpoints = match self.services.backend.checkpoints(&parent).await {
                Ok(checkpoints) => checkpoints,
                Err(e) => {
                    tracing::warn!(durable.instance_id = %parent, durable.error = %e, "could not read the children of a cancelled instance");
                    continue;
                }
            };
            for child in children_of(&checkpoints).into_iter().filter(|c| c.cascade) {
                match self.cancel_one(&child.id).await {
                    Ok(()) | Err(Error::Usage(UsageError::InstanceFinished { .. })) => {}
                    Err(Error::Usage(UsageError::NotFound { .. })) => continue,
                    Err(e) => {
                        tracing::warn!(durable.instance_id = %child.id, durable.parent = %parent, durable.error = %e, "could not cancel the child of a cancelled instance");
                    }
                }
                // Its own children go too, finished or not (a child that
                // ended may have left running children of its own).
                stack.push(child.id);
            }
        }
    }

    /// Tells `parent` (if child `id` has one) that `id` ended: an event
    /// `durable::child_result:{id}` wakes the parent if it parked waiting
    /// for it (a parent that is live learns of the end from its handle).
    /// Best effort: a parent whose hint is lost looks again at its next
    /// recheck (see `Ctx::wait_child`).
    pub(super) async fn tell_parent(&self, id: &str, parent: Option<&str>) {
        let Some(parent) = parent else { return };
        let event = EventRecord {
            type_name: "the child's end".to_string(),
            fingerprint: 0,
            shape: String::new(),
            payload: Vec::new(),
            sent_at_ms: self.services.clock.now_ms(),
        };
        let name = format!("{CHILD_RESULT}:{id}");
        let check = |_: &InstanceRecord, _: u32, _: Option<&str>, _: bool| Ok(());
        match self
            .services
            .backend
            .send_event(parent, &name, event, &check)
            .await
        {
            Ok(_)
            | Err(Error::Usage(
                UsageError::NotFound { .. } | UsageError::InstanceFinished { .. },
            )) => {}
            Err(e) => {
                tracing::debug!(durable.instance_id = %id, durable.parent = %parent, durable.error = %e, "could not tell the parent that its child ended; it looks again later");
            }
        }
    }

    /// Whether instance `record`, about to run, is the child of a parent
    /// that was cancelled while it was meant to go with it: then it is
    /// cancelled instead of run.
    pub(super) async fn orphaned(&self, record: &InstanceRecord) -> bool {
        let Some((parent, true)) = record.parent() else {
            return false;
        };
        matches!(
            self.services.backend.load(parent).await,
            Ok(Some(parent)) if parent.state == InstanceState::Cancelled
        )
    }
}
