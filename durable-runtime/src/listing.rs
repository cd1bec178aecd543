//! Listing instances: [`ListFilter`] in, one [`Page`] of
//! [`InstanceSummary`] out, continued with a [`Cursor`].

use std::time::SystemTime;

use crate::inspect::Status;
use crate::records::InstanceRecord;
use crate::time::{from_ms as time, to_ms};

/// The kind of a [`Status`], without its details: what
/// [`ListFilter::status`] filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusKind {
    /// [`Status::Running`].
    Running,
    /// [`Status::Sleeping`].
    Sleeping,
    /// [`Status::Waiting`].
    Waiting,
    /// [`Status::Blocked`].
    Blocked,
    /// [`Status::NeedsAttention`].
    NeedsAttention,
    /// [`Status::Completed`].
    Completed,
    /// [`Status::Failed`].
    Failed,
    /// [`Status::Cancelled`].
    Cancelled,
    /// [`Status::Incompatible`].
    Incompatible,
    /// [`Status::Paused`].
    Paused,
    /// [`Status::Queued`].
    Queued,
}

impl Status {
    /// The status's kind.
    pub fn kind(&self) -> StatusKind {
        match self {
            Status::Running { .. } => StatusKind::Running,
            Status::Sleeping { .. } => StatusKind::Sleeping,
            Status::Waiting { .. } => StatusKind::Waiting,
            Status::Blocked { .. } => StatusKind::Blocked,
            Status::NeedsAttention { .. } => StatusKind::NeedsAttention,
            Status::Completed { .. } => StatusKind::Completed,
            Status::Failed { .. } => StatusKind::Failed,
            Status::Cancelled => StatusKind::Cancelled,
            Status::Incompatible { .. } => StatusKind::Incompatible,
            Status::Paused { .. } => StatusKind::Paused,
            Status::Queued { .. } => StatusKind::Queued,
        }
    }

    /// Whether the instance has finished (completed, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.kind(),
            StatusKind::Completed | StatusKind::Failed | StatusKind::Cancelled
        )
    }
}

/// Which instances [`Engine::list`](crate::Engine::list) returns: every
/// condition set must hold. Results come newest first (by creation time),
/// one page at a time.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use durable_runtime::{ListFilter, StatusKind};
///
/// let blocked_today = ListFilter::new()
///     .status(StatusKind::Blocked)
///     .status(StatusKind::NeedsAttention)
///     .workflow("provision")
///     .created_after(SystemTime::now() - Duration::from_secs(86_400))
///     .limit(50);
/// # let _ = blocked_today;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListFilter {
    /// Only these kinds of status (any of them); empty for every status.
    pub statuses: Vec<StatusKind>,
    /// Only instances of this workflow.
    pub workflow: Option<String>,
    /// Only instances enqueued on this queue (pending or dispatched).
    pub queue: Option<String>,
    /// Only instances created at or after this time.
    pub created_after: Option<SystemTime>,
    /// Only instances created before this time.
    pub created_before: Option<SystemTime>,
    /// Only instances whose last status change is at or after this time.
    pub updated_after: Option<SystemTime>,
    /// Only instances whose last status change is before this time.
    pub updated_before: Option<SystemTime>,
    /// The most instances in one page (at least 1; default 100).
    pub limit: usize,
    /// Where the page starts: the [`Page::next`] of the previous page.
    pub after: Option<Cursor>,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            statuses: Vec::new(),
            workflow: None,
            queue: None,
            created_after: None,
            created_before: None,
            updated_after: None,
            updated_before: None,
            limit: 100,
            after: None,
        }
    }
}

impl ListFilter {
    /// Every instance, 100 to a page.
    pub fn new() -> ListFilter {
        ListFilter::default()
    }

    /// Adds a status kind to those accepted.
    pub fn status(mut self, kind: StatusKind) -> Self {
        self.statuses.push(kind);
        self
    }

    /// Only instances of workflow `name`.
    pub fn workflow(mut self, name: impl Into<String>) -> Self {
        self.workflow = Some(name.into());
        self
    }

    /// Only instances enqueued on queue `name`.
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
    }

    /// Only instances created at or after `t`.
    pub fn created_after(mut self, t: SystemTime) -> Self {
        self.created_after = Some(t);
        self
    }

    /// Only instances created before `t`.
    pub fn created_before(mut self, t: SystemTime) -> Self {
        self.created_before = Some(t);
        self
    }

    /// Only instances whose status last changed at or after `t`.
    pub fn updated_after(mut self, t: SystemTime) -> Self {
        self.updated_after = Some(t);
        self
    }

    /// Only instances whose status last changed before `t`.
    pub fn updated_before(mut self, t: SystemTime) -> Self {
        self.updated_before = Some(t);
        self
    }

    /// At most `n` instances per page (at least 1).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n.max(1);
        self
    }

    /// Continues after the page that returned `cursor` as its `next`.
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Whether `summary` passes the conditions that need the record.
    pub(crate) fn accepts(&self, summary: &InstanceSummary) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&summary.status.kind()))
            && self
                .workflow
                .as_ref()
                .is_none_or(|w| *w == summary.workflow)
            && self
                .queue
                .as_ref()
                .is_none_or(|q| summary.queue.as_ref() == Some(q))
            && self.updated_after.is_none_or(|t| summary.updated_at >= t)
            && self.updated_before.is_none_or(|t| summary.updated_at < t)
    }

    /// The creation-time bounds in milliseconds: (at or after, before).
    pub(crate) fn created_ms(&self) -> (u64, Option<u64>) {
        (
            self.created_after.map_or(0, to_ms),
            self.created_before.map(to_ms),
        )
    }
}

/// Where a listing goes on: pass a page's [`Page::next`] to
/// [`ListFilter::after`]. Its text form (`Display` / `FromStr`) is stable
/// across processes, for command lines and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(pub(crate) Vec<u8>);

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Cursor, InvalidCursor> {
        if !s.len().is_multiple_of(2) || s.len() < 16 {
            return Err(InvalidCursor);
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(InvalidCursor)
            })
            .collect::<Result<Vec<u8>, _>>()
            .map(Cursor)
    }
}

/// A text that is not a [`Cursor`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a listing cursor (a cursor is the hex text a page returned as `next`)")]
pub struct InvalidCursor;

/// One instance in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceSummary {
    /// The instance id.
    pub id: String,
    /// Its workflow's name.
    pub workflow: String,
    /// The queue it was enqueued on, if any.
    pub queue: Option<String>,
    /// Its status now.
    pub status: Status,
    /// When it was started.
    pub created_at: SystemTime,
    /// When its status last changed.
    pub updated_at: SystemTime,
}

impl InstanceSummary {
    /// The summary of `record`, with `status` as the engine sees it.
    pub(crate) fn of(id: String, record: &InstanceRecord, status: Status) -> InstanceSummary {
        let updated_ms = record
            .transitions
            .last()
            .map_or(record.created_at_ms, |t| t.at_ms);
        InstanceSummary {
            id,
            workflow: record.workflow.clone(),
            queue: record.queue_entry().map(|(e, _)| e.queue.clone()),
            status,
            created_at: time(record.created_at_ms),
            updated_at: time(updated_ms),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page {
    /// The instances, newest first.
    pub instances: Vec<InstanceSummary>,
    /// Where the next page starts, or `None` when no instance follows. A
    /// following page can still come back empty when none of the instances
    /// after this one passes the filter.
    pub next: Option<Cursor>,
}

/// Index entries read per store call while filling a page.
const SCAN_CHUNK: usize = 256;

/// The creation time in a key of the creation-time index.
fn created_ms(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// One page of a listing over a creation-time index read newest first:
/// `page(before, limit)` reads index entries, `load(id)` an instance's
/// record and park record. For backends without a query language.
pub(crate) fn list_by_created(
    filter: &ListFilter,
    page: impl Fn(Option<&[u8]>, usize) -> crate::error::Result<crate::store::Entries>,
    load: impl Fn(
        &str,
    )
        -> crate::error::Result<Option<(InstanceRecord, Option<crate::records::ParkRecord>)>>,
) -> crate::error::Result<Page> {
    use crate::records::{created_key, id_of_created_key};
    let (after_ms, before_ms) = filter.created_ms();
    let mut from: Option<Vec<u8>> = match (&filter.after, before_ms) {
        (Some(cursor), _) => Some(cursor.0.clone()),
        (None, Some(before)) => Some(created_key(before, "")),
        (None, None) => None,
    };
    let mut instances = Vec::new();
    loop {
        let chunk = page(from.as_deref(), SCAN_CHUNK)?;
        let exhausted = chunk.len() < SCAN_CHUNK;
        for (key, _) in chunk {
            if key.len() < 8 || created_ms(&key) < after_ms {
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
            let Ok(Some((record, park))) = load(id) else {
                continue;
            };
            let status = crate::inspect::stored_status(&record, park.as_ref());
            let summary = InstanceSummary::of(id.to_string(), &record, status);
            if filter.accepts(&summary) {
                instances.push(summary);
                if instances.len() >= filter.limit {
                    // A cursor only if the index holds a later entry in range.
                    let more = page(Some(&key), 1)?
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
