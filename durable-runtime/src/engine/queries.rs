//! Status, history and listing: what the backend records, with the step
//! attempts this process runs now added.

use crate::error::{Error, Result};
use crate::inspect::{self, History, Status};
use crate::listing::{ListFilter, Page};
use crate::records::{InstanceRecord, InstanceState};

use super::Core;

impl Core {
    pub(super) async fn status(&self, id: &str) -> Result<Status> {
        let record = self.record(id).await?;
        self.status_of(id, &record).await
    }

    pub(super) async fn history(&self, id: &str) -> Result<History> {
        let record = self.record(id).await?;
        let checkpoints = self.services.backend.checkpoints(id).await?;
        let in_flight = self.in_flight(id, &record);
        let mut history = inspect::history_of(id, &record, checkpoints, &in_flight);
        history.status = self.status_of(id, &record).await?;
        Ok(history)
    }

    pub(super) async fn list(&self, filter: &ListFilter) -> Result<Page> {
        let mut page = self.services.backend.list(filter).await?;
        for summary in &mut page.instances {
            if let Status::Running { steps } = &mut summary.status
                && let Some(slot) = self.instances.get(&summary.id)
            {
                *steps = inspect::running_steps(
                    slot.signals
                        .in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                );
            }
        }
        Ok(page)
    }

    async fn record(&self, id: &str) -> Result<InstanceRecord> {
        self.services
            .backend
            .load(id)
            .await?
            .ok_or_else(|| Error::Usage(crate::error::UsageError::NotFound { id: id.to_string() }))
    }

    /// The step attempts of `id` running in this process now.
    fn in_flight(&self, id: &str, record: &InstanceRecord) -> Vec<crate::context::InFlight> {
        if record.state != InstanceState::Running {
            return Vec::new();
        }
        self.instances.get(id).map_or_else(Vec::new, |slot| {
            slot.signals
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// The status of `id`: with what it waits for if it is parked, and its
    /// step attempts running in this process now.
    async fn status_of(&self, id: &str, record: &InstanceRecord) -> Result<Status> {
        let park = if record.state == InstanceState::Running {
            self.services.backend.park_of(id).await?
        } else {
            None
        };
        let mut status = inspect::stored_status(record, park.as_ref());
        if let Status::Running { steps } = &mut status {
            *steps = inspect::running_steps(self.in_flight(id, record));
        }
        Ok(status)
    }
}
