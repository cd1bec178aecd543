//! Status, history and listing: what the store records, with what only this
//! process knows (parked instances, step attempts running now) added.

use crate::error::{Error, Result};
use crate::inspect::{self, History, Status};
use crate::listing::{Cursor, InstanceSummary, ListFilter, Page};
use crate::records::{InstanceRecord, InstanceState, created_key, id_of_created_key};
use crate::time::from_ms;

use super::Core;

/// Index entries read per store call while filling a page.
const SCAN_CHUNK: usize = 256;

/// The creation time in a key of the creation-time index.
fn created_ms(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl Core {
    pub(super) fn status(&self, id: &str) -> Result<Status> {
        let record = self.services.journal.load(id)?.ok_or_else(|| {
            Error::Usage(crate::error::UsageError::NotFound { id: id.to_string() })
        })?;
        Ok(self.status_of(id, &record))
    }

    pub(super) fn history(&self, id: &str) -> Result<History> {
        let journal = &self.services.journal;
        let record = journal.load(id)?.ok_or_else(|| {
            Error::Usage(crate::error::UsageError::NotFound { id: id.to_string() })
        })?;
        let checkpoints = journal.load_checkpoints(id)?;
        let in_flight = self.in_flight(id, &record);
        let mut history = inspect::history_of(id, &record, checkpoints, &in_flight);
        history.status = self.status_of(id, &record);
        Ok(history)
    }

    pub(super) fn list(&self, filter: &ListFilter) -> Result<Page> {
        let journal = &self.services.journal;
        let (after_ms, before_ms) = filter.created_ms();
        let mut from: Option<Vec<u8>> = match (&filter.after, before_ms) {
            (Some(cursor), _) => Some(cursor.0.clone()),
            (None, Some(before)) => Some(created_key(before, "")),
            (None, None) => None,
        };
        let mut instances = Vec::new();
        loop {
            let chunk = journal.created_page(from.as_deref(), SCAN_CHUNK)?;
            let exhausted = chunk.len() < SCAN_CHUNK;
            for (key, _) in chunk {
                if key.len() < 8
                    || u64::from_be_bytes(key[..8].try_into().unwrap_or_default()) < after_ms
                {
                    return Ok(Page {
                        instances,
                        next: None,
                    });
                }
                from = Some(key.clone());
                let Some(id) = id_of_created_key(&key) else {
                    continue;
                };
                // Purged or unreadable instances are left out of listings.
                let Ok(Some(record)) = journal.load(id) else {
                    continue;
                };
                let status = self.status_of(id, &record);
                let summary = InstanceSummary::of(id.to_string(), &record, status);
                if filter.accepts(&summary) {
                    instances.push(summary);
                    if instances.len() >= filter.limit {
                        // A cursor only if the index holds a later entry in range.
                        let more = journal
                            .created_page(Some(&key), 1)?
                            .first()
                            .is_some_and(|(k, _)| created_ms(k) >= after_ms);
                        return Ok(Page {
                            instances,
                            next: more.then_some(Cursor(key)),
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page {
                    instances,
                    next: None,
                });
            }
        }
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
    /// step attempts running now.
    pub(super) fn status_of(&self, id: &str, record: &InstanceRecord) -> Status {
        if record.state == InstanceState::Running {
            if let Some(parked) = self.scheduler.table().get(id) {
                let until = parked.deadline_ms.map(from_ms);
                return match parked.events.first() {
                    Some(event) => Status::Waiting {
                        event: event.name.to_string(),
                        until,
                    },
                    None => Status::Sleeping {
                        until: until.unwrap_or(std::time::UNIX_EPOCH),
                    },
                };
            }
            return Status::Running {
                steps: inspect::running_steps(self.in_flight(id, record)),
            };
        }
        inspect::status_of(&record.state)
    }
}
