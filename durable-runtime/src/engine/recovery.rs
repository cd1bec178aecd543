//! Recovery at open: the first round of the claim loop. Every unfinished
//! instance of a registered workflow that nobody runs is resumed; parked
//! ones wait for their timer or event.

use std::sync::Arc;

use crate::error::Result;

use super::Core;

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
    /// Recovery: the claim loop's first round, which resumes every
    /// unfinished instance of a registered workflow that nobody runs, and
    /// its report.
    pub(super) async fn recover(self: &Arc<Self>) -> Result<RecoveryReport> {
        let (round, resumed) = self.claim_round().await?;
        let mut report = RecoveryReport {
            resumed,
            parked: round.parked,
            skipped: Vec::new(),
        };
        for (id, why) in round.passed_over {
            let reason = match why {
                Ok(record) => {
                    tracing::warn!(durable.instance_id = %id, durable.workflow = %record.workflow, "unfinished instance of an unregistered workflow left untouched");
                    self.registry.not_registered(&record)
                }
                Err(reason) => reason,
            };
            report.skipped.push((id, reason));
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
