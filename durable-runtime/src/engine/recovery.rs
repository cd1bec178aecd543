//! Recovery at open: every unfinished instance of a registered workflow is
//! resumed, or put back in the park table if it was parked.

use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::records::InstanceState;

use super::Core;
use super::driver::Begin;
use super::instances::Slot;

/// What recovery at [`EngineBuilder::open`](crate::EngineBuilder::open) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Unfinished instances that were resumed.
    pub resumed: usize,
    /// Instances parked in a sleep or a wait, put back in the park table
    /// without running (their timer or event wakes them).
    pub parked: usize,
    /// Unfinished instances left untouched, with the reason (their workflow
    /// is not registered, or their record does not decode).
    pub skipped: Vec<(String, String)>,
}

impl Core {
    /// Resumes every unfinished instance of a registered workflow.
    pub(super) async fn recover(self: Arc<Self>) -> Result<RecoveryReport> {
        let services = Arc::clone(&self.services);
        let (active, mut parks) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::error::Error>((services.journal.active()?, services.journal.parks()?))
        })
        .await
        .map_err(|e| StoreError::Io {
            op: "recovery scan",
            reason: e.to_string(),
        })??;
        let mut report = RecoveryReport::default();
        let now = self.services.clock.now_ms();
        for (key, stored) in active {
            let park = parks.remove(&key);
            let id = match String::from_utf8(key) {
                Ok(id) => id,
                Err(e) => {
                    report.skipped.push((
                        String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        "the id is not UTF-8".into(),
                    ));
                    continue;
                }
            };
            let record = match self.services.journal.load(&id) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    report
                        .skipped
                        .push((id, "listed as unfinished but has no record".into()));
                    continue;
                }
                Err(e) => {
                    report.skipped.push((id, e.to_string()));
                    continue;
                }
            };
            if let InstanceState::NeedsAttention { error } = &record.state {
                report
                    .skipped
                    .push((id, format!("needs attention: {error}")));
                continue;
            }
            let Some((workflow, erased)) = self.registry.for_record(&record) else {
                let reason = self.registry.not_registered(&record);
                tracing::warn!(durable.instance_id = %id, durable.workflow = %record.workflow, "unfinished instance of an unregistered workflow left untouched");
                report.skipped.push((id, reason));
                continue;
            };
            if record.state == InstanceState::Running
                && let Some(park) = park
            {
                // Parked when the process stopped: back into the table, no task.
                // A clock set backwards meanwhile cannot stretch a wait.
                let clamp = |d: u64| d.min(now.saturating_add(d.saturating_sub(park.parked_at_ms)));
                self.scheduler.insert(&id, &park.conds, clamp);
                self.wake_if_event_arrived(&id, &park.conds)?;
                report.parked += 1;
                continue;
            }
            let slot = Slot::new(workflow, record.input.clone(), true);
            self.instances.lock().insert(id.clone(), Arc::clone(&slot));
            Arc::clone(&self).spawn(id, erased, record, Begin::Resume(Some(stored)), slot);
            report.resumed += 1;
        }
        tracing::info!(
            durable.resumed = report.resumed,
            durable.parked = report.parked,
            durable.skipped = report.skipped.len(),
            "recovery done"
        );
        Ok(report)
    }
}
