//! What a start needs besides its arguments: [`StartOptions`], the
//! workflow to start (registered here, or recorded for the workers of a
//! shared store) and its deadline.

use std::sync::Arc;

use crate::error::Result;
use crate::workflow::{IntoWorkflow, Workflow};

use super::Engine;
use super::registry;

/// Options of [`Engine::start_with`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct StartOptions {
    pub(super) deadline: Option<std::time::Duration>,
}

impl StartOptions {
    /// No options: as [`Engine::start`].
    pub fn new() -> Self {
        StartOptions::default()
    }

    /// A whole-workflow deadline, `after` from the start on the engine's
    /// clock: if the instance has not finished by then it is cancelled
    /// where it stands (a step running then is dropped; a parked instance
    /// is woken for it), with status [`Status::Cancelled`](crate::Status::Cancelled) and
    /// [`TransitionKind::DeadlinePassed`](crate::TransitionKind::DeadlinePassed)
    /// in its history; its handles return
    /// [`InstanceError::DeadlinePassed`](crate::InstanceError::DeadlinePassed)
    /// or [`InstanceError::Cancelled`](crate::InstanceError::Cancelled).
    pub fn deadline(mut self, after: std::time::Duration) -> Self {
        self.deadline = Some(after);
        self
    }
}

impl Engine {
    /// The workflow to start and whether this process runs it: a
    /// registered one, or (a pure client of a shared store such as
    /// PostgreSQL) one recorded for the workers that register it.
    pub(super) async fn to_start<I: IntoWorkflow>(
        &self,
        workflow: I,
    ) -> Result<(Arc<dyn registry::Erased>, bool)> {
        match self.core.registry.get::<I::Workflow>() {
            Ok(erased) => Ok((erased, true)),
            Err(_) if self.core.services.backend.shared() => {
                let (_, erased) = registry::entry(workflow.into_workflow());
                let manifest = &erased.manifest().0;
                self.core
                    .services
                    .backend
                    .store_manifests(&[manifest])
                    .await?;
                Ok((erased, false))
            }
            Err(e) => Err(e),
        }
    }

    /// The deadline (clock milliseconds) of an instance of `W` started
    /// now: `given`, else the workflow's own `timeout`, else none.
    pub(super) fn deadline_of<W: Workflow>(
        &self,
        given: Option<std::time::Duration>,
    ) -> Option<u64> {
        given
            .or(W::TIMEOUT_MS.map(std::time::Duration::from_millis))
            .map(|d| {
                self.core
                    .services
                    .clock
                    .now_ms()
                    .saturating_add(crate::time::duration_ms(d))
            })
    }
}
