//! What operators reach through the command line and the admin endpoint
//! (feature `json`): instances, histories and statistics as JSON documents
//! with stored values decoded by their manifest shape, events sent as JSON,
//! resuming an instance by id alone, and the deploy gate against manifests
//! read from a file.
//!
//! Every read here reads the store and this process's memory only; the
//! only writes are the ones the operator asked for (`send_event_json`,
//! `resume_instance`, and `Engine::cancel`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result, UsageError};
use crate::ids::validate_id;
use crate::inspect::Status;
use crate::json::JsonShape;
use crate::listing::{Cursor, InstanceSummary, ListFilter, StatusKind};
use crate::manifest::{Manifest, Shape};
use crate::records::{InstanceRecord, ParkRecord, created_key};
use crate::time::to_ms;

use super::Engine;

mod actions;
mod history;

/// Milliseconds since the Unix epoch, as every time in these documents.
fn ms(t: std::time::SystemTime) -> u64 {
    to_ms(t)
}

/// The lower-case name of a status kind, as documents and filters spell it.
pub fn status_name(kind: StatusKind) -> &'static str {
    match kind {
        StatusKind::Running => "running",
        StatusKind::Sleeping => "sleeping",
        StatusKind::Waiting => "waiting",
        StatusKind::Blocked => "blocked",
        StatusKind::NeedsAttention => "needs-attention",
        StatusKind::Completed => "completed",
        StatusKind::Failed => "failed",
        StatusKind::Cancelled => "cancelled",
        StatusKind::Incompatible => "incompatible",
        StatusKind::Paused => "paused",
        StatusKind::Queued => "queued",
    }
}

/// Every status kind, in the order listings count them.
pub const STATUS_KINDS: [StatusKind; 11] = [
    StatusKind::Queued,
    StatusKind::Running,
    StatusKind::Sleeping,
    StatusKind::Waiting,
    StatusKind::Blocked,
    StatusKind::NeedsAttention,
    StatusKind::Incompatible,
    StatusKind::Paused,
    StatusKind::Completed,
    StatusKind::Failed,
    StatusKind::Cancelled,
];

/// The status kind named `name` (as [`status_name`] spells it; `_` for `-`
/// and any case accepted).
pub fn parse_status(name: &str) -> Option<StatusKind> {
    let name = name.to_ascii_lowercase().replace('_', "-");
    STATUS_KINDS.into_iter().find(|k| {
        status_name(*k) == name
            || (name == "needsattention" && status_name(*k) == "needs-attention")
    })
}

/// A status as JSON: `{"kind": "waiting", "event": "approval", "until_ms": ..}`.
pub fn status_json(status: &Status) -> Value {
    let mut out = Map::new();
    out.insert("kind".into(), status_name(status.kind()).into());
    match status {
        Status::Running { steps } => {
            out.insert(
                "steps".into(),
                steps
                    .iter()
                    .map(|s| {
                        json!({"name": s.name, "occurrence": s.occurrence,
                               "attempt": s.attempt, "since_ms": ms(s.since)})
                    })
                    .collect(),
            );
        }
        Status::Blocked { reason }
        | Status::Failed { reason }
        | Status::NeedsAttention { reason }
        | Status::Incompatible { reason } => {
            out.insert("reason".into(), reason.clone().into());
        }
        Status::Completed { is_err } => {
            out.insert("is_err".into(), json!(is_err));
        }
        Status::Sleeping { until } => {
            out.insert("until_ms".into(), ms(*until).into());
        }
        Status::Waiting { event, until } => {
            out.insert("event".into(), event.clone().into());
            out.insert("until_ms".into(), json!(until.map(ms)));
        }
        Status::Paused { since } => {
            out.insert("since_ms".into(), ms(*since).into());
        }
        Status::Queued { queue } => {
            out.insert("queue".into(), queue.clone().into());
        }
        Status::Cancelled => {}
    }
    Value::Object(out)
}

fn summary_json(s: &InstanceSummary) -> Value {
    json!({
        "id": s.id,
        "workflow": s.workflow,
        "queue": s.queue,
        "status": status_json(&s.status),
        "created_at_ms": ms(s.created_at),
        "updated_at_ms": ms(s.updated_at),
    })
}

/// A decoded value, or why it could not be decoded.
fn put_value(out: &mut Map<String, Value>, field: &str, decoded: Result<Value, String>) {
    match decoded {
        Ok(v) => {
            out.insert(field.into(), v);
        }
        Err(e) => {
            out.insert(format!("{field}_error"), e.into());
        }
    }
}

fn decode(shape: Option<&Shape>, bytes: &[u8]) -> Result<Value, String> {
    let shape = shape.ok_or("the store holds no manifest for this instance")?;
    JsonShape::parse(shape)
        .and_then(|s| s.decode(bytes))
        .map_err(|e| e.to_string())
}

fn invalid_json(what: String, reason: String) -> Error {
    Error::Usage(UsageError::InvalidJson { what, reason })
}

impl Engine {
    async fn record(&self, id: &str) -> Result<InstanceRecord> {
        validate_id(id)?;
        self.core
            .services
            .backend
            .load(id)
            .await?
            .ok_or_else(|| Error::Usage(UsageError::NotFound { id: id.to_string() }))
    }

    /// The manifest instance `record` started with if the store has it,
    /// else the registered one: stored values were written with it.
    async fn manifest_written_with(&self, record: &InstanceRecord) -> Option<Manifest> {
        match self.core.services.backend.manifest(record.manifest).await {
            Ok(Some(manifest)) => Some(manifest),
            _ => self.core.manifest_for(record).await,
        }
    }

    /// The status of `id` as the engine sees it, with a parked instance of
    /// a workflow this process does not run (an engine opened only to
    /// inspect) shown as sleeping or waiting from its stored park record.
    fn status_with_park(&self, status: Status, park: Option<&ParkRecord>) -> Status {
        match (status, park) {
            (Status::Running { steps }, Some(park)) if steps.is_empty() => {
                let until = park
                    .conds
                    .iter()
                    .filter_map(|c| c.deadline_ms)
                    .min()
                    .map(crate::time::from_ms);
                match park.conds.iter().find(|c| c.event_type.is_some()) {
                    Some(wait) => Status::Waiting {
                        event: wait.name.clone(),
                        until,
                    },
                    None => Status::Sleeping {
                        until: until.unwrap_or(std::time::UNIX_EPOCH),
                    },
                }
            }
            (status, _) => status,
        }
    }

    async fn park_of(&self, id: &str) -> Result<Option<ParkRecord>> {
        self.core.services.backend.park_of(id).await
    }

    /// One page of instances passing `filter`, as JSON:
    /// `{"instances": [{id, workflow, status, created_at_ms, updated_at_ms}],
    /// "next": cursor or null}`. Parked instances of workflows this process
    /// does not run count as sleeping or waiting (from their stored park
    /// record), also for the status filter.
    pub async fn list_json(&self, filter: &ListFilter) -> Result<Value> {
        let mut raw = filter.clone();
        raw.statuses.clear();
        let mut out = Vec::new();
        loop {
            let page = self.core.list(&raw).await?;
            let count = page.instances.len();
            for (i, mut s) in page.instances.into_iter().enumerate() {
                let park = match &s.status {
                    Status::Running { steps } if steps.is_empty() => self.park_of(&s.id).await?,
                    _ => None,
                };
                s.status = self.status_with_park(s.status, park.as_ref());
                if !filter.statuses.is_empty() && !filter.statuses.contains(&s.status.kind()) {
                    continue;
                }
                out.push(summary_json(&s));
                if out.len() >= filter.limit {
                    let more = i + 1 < count || page.next.is_some();
                    let next =
                        more.then(|| Cursor(created_key(ms(s.created_at), &s.id)).to_string());
                    return Ok(json!({"instances": out, "next": next}));
                }
            }
            match page.next {
                Some(cursor) => raw.after = Some(cursor),
                None => break,
            }
        }
        Ok(json!({"instances": out, "next": null}))
    }

    /// Counts of instances by status and by workflow (reads every
    /// instance's record once): `{"total": n, "by_status": {"running": n,
    /// ..}, "by_workflow": {"name": {"total": n, "running": n, ..}}}`.
    pub async fn stats_json(&self) -> Result<Value> {
        let mut by_status: BTreeMap<&'static str, u64> =
            STATUS_KINDS.iter().map(|k| (status_name(*k), 0)).collect();
        let mut by_workflow: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        let mut total = 0u64;
        let mut filter = ListFilter::new().limit(1000);
        loop {
            let page = self.list_json(&filter).await?;
            for s in page["instances"].as_array().into_iter().flatten() {
                let kind = s["status"]["kind"].as_str().and_then(parse_status);
                let Some(kind) = kind else { continue };
                let name = status_name(kind);
                total += 1;
                *by_status.entry(name).or_default() += 1;
                let w = by_workflow
                    .entry(s["workflow"].as_str().unwrap_or_default().to_string())
                    .or_default();
                *w.entry("total").or_default() += 1;
                *w.entry(name).or_default() += 1;
            }
            match page["next"].as_str().and_then(|c| c.parse::<Cursor>().ok()) {
                Some(cursor) => filter = filter.after(cursor),
                None => break,
            }
        }
        Ok(json!({"total": total, "by_status": by_status, "by_workflow": by_workflow}))
    }

    /// Every queue with its counts and limits ([`Engine::queues`]):
    /// `{"queues": [{"name": .., "pending": n, "running": n, "declared":
    /// bool, "concurrency": n|null, "partition_concurrency": n|null,
    /// "per_worker": n|null, "rate": {"n": n, "period_ms": n}|null}]}`.
    pub async fn queues_json(&self) -> Result<Value> {
        let queues: Vec<Value> = self
            .queues()
            .await?
            .into_iter()
            .map(|q| {
                json!({
                    "name": q.queue.name(),
                    "pending": q.pending,
                    "running": q.running,
                    "declared": q.declared,
                    "concurrency": q.queue.concurrency_limit(),
                    "partition_concurrency": q.queue.partition_limit(),
                    "per_worker": q.queue.per_worker_limit(),
                    "rate": q.queue.rate().map(|(n, p)| json!({"n": n, "period_ms": p.as_millis() as u64})),
                })
            })
            .collect();
        Ok(json!({ "queues": queues }))
    }
}
