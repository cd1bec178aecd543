//! The `status` column: what the claim queries and listings filter on,
//! derived from the instance record and its park record, and the
//! [`Status`] a listing shows from it.

use crate::error::{Error, Result, UsageError};
use crate::inspect::{self, Status};
use crate::listing::StatusKind;
use crate::records::{InstanceRecord, InstanceState, ParkRecord};
use crate::time::from_ms;

pub(super) const RUNNING: i16 = 0;
/// Parked, and the event it waits for arrived: claimable as a wake-up.
pub(super) const READY: i16 = 1;
pub(super) const SLEEPING: i16 = 2;
pub(super) const WAITING: i16 = 3;
pub(super) const BLOCKED: i16 = 4;
pub(super) const NEEDS_ATTENTION: i16 = 5;
pub(super) const INCOMPATIBLE: i16 = 6;
pub(super) const COMPLETED: i16 = 7;
pub(super) const FAILED: i16 = 8;
pub(super) const CANCELLED: i16 = 9;
/// Not a value of the column: what a listing matches a paused unfinished
/// instance as (the `paused` column), whatever its status.
pub(super) const PAUSED: i16 = -1;
/// Not a value of the column: what a listing matches an instance held in
/// its queue as (the `queued` column).
pub(super) const QUEUED: i16 = -2;

/// The status of an instance in `state`, not parked.
pub(super) fn of_state(state: &InstanceState) -> i16 {
    match state {
        InstanceState::Running => RUNNING,
        InstanceState::Blocked { .. } => BLOCKED,
        InstanceState::NeedsAttention { .. } => NEEDS_ATTENTION,
        InstanceState::Incompatible { .. } => INCOMPATIBLE,
        InstanceState::Completed { .. } | InstanceState::Returned { .. } => COMPLETED,
        InstanceState::Failed { .. } => FAILED,
        InstanceState::Cancelled => CANCELLED,
    }
}

/// The status of an instance parked on `park`.
pub(super) fn of_park(park: &ParkRecord) -> i16 {
    if park.conds.iter().any(|c| c.event_type.is_some()) {
        WAITING
    } else {
        SLEEPING
    }
}

/// Whether `state` is finished (completed, failed or cancelled).
pub(super) fn finished(state: &InstanceState) -> bool {
    of_state(state) >= COMPLETED
}

/// The earliest deadline `park` wakes at by itself.
pub(super) fn wake_at(park: &ParkRecord) -> Option<u64> {
    park.conds.iter().filter_map(|c| c.deadline_ms).min()
}

/// The status codes a listing of `kind` selects.
pub(super) fn codes(kind: StatusKind) -> &'static [i16] {
    match kind {
        StatusKind::Running => &[RUNNING, READY],
        StatusKind::Sleeping => &[SLEEPING],
        StatusKind::Waiting => &[WAITING],
        StatusKind::Blocked => &[BLOCKED],
        StatusKind::NeedsAttention => &[NEEDS_ATTENTION],
        StatusKind::Completed => &[COMPLETED],
        StatusKind::Failed => &[FAILED],
        StatusKind::Cancelled => &[CANCELLED],
        StatusKind::Incompatible => &[INCOMPATIBLE],
        StatusKind::Paused => &[PAUSED],
        StatusKind::Queued => &[QUEUED],
    }
}

/// The [`Status`] of an instance whose row says `code`, `record` and `park`,
/// as the engine shows it (without step attempts running in a process).
pub(super) fn status(code: i16, record: &InstanceRecord, park: Option<&ParkRecord>) -> Status {
    if let Some(since) = record.paused_since() {
        return Status::Paused {
            since: from_ms(since),
        };
    }
    if record.queued()
        && let Some((entry, _)) = record.queue_entry()
    {
        return Status::Queued {
            queue: entry.queue.clone(),
        };
    }
    if record.state == InstanceState::Running
        && let Some(park) = park.filter(|_| code == SLEEPING || code == WAITING)
    {
        let until = wake_at(park).map(from_ms);
        return match park.conds.iter().find(|c| c.event_type.is_some()) {
            Some(wait) => Status::Waiting {
                event: wait.name.clone(),
                until,
            },
            None => Status::Sleeping {
                until: until.unwrap_or(std::time::UNIX_EPOCH),
            },
        };
    }
    inspect::status_of(&record.state)
}

/// [`UsageError::InstanceFinished`] if `state` is finished (the words the
/// engine uses for it).
pub(super) fn ensure_unfinished(id: &str, state: &InstanceState) -> Result<()> {
    let status = match state {
        InstanceState::Completed { .. } | InstanceState::Returned { .. } => "completed",
        InstanceState::Failed { .. } => "failed",
        InstanceState::Cancelled => "cancelled",
        _ => return Ok(()),
    };
    Err(Error::Usage(UsageError::InstanceFinished {
        instance: id.to_string(),
        status,
    }))
}

/// When the status of `record` last changed, in ms (as a listing shows it).
pub(super) fn updated_ms(record: &InstanceRecord) -> i64 {
    record
        .transitions
        .last()
        .map_or(record.created_at_ms, |t| t.at_ms) as i64
}
