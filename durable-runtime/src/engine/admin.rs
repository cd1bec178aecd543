//! What operators reach through the command line and the admin endpoint
//! (feature `json`): instances, histories and statistics as JSON documents
//! with stored values decoded by their manifest shape, events sent as JSON,
//! resuming an instance by id alone, and the deploy gate against manifests
//! read from a file.
//!
//! Every read here reads the store and this process's memory only; the
//! only writes are the ones the operator asked for (`send_event_json`,
//! `resume_instance`, and `Engine::cancel`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result, UsageError};
use crate::ids::validate_id;
use crate::inspect::{History, Status, StepOutcome, TransitionKind};
use crate::json::JsonShape;
use crate::listing::{Cursor, InstanceSummary, ListFilter, StatusKind};
use crate::manifest::{Manifest, Recorded, Shape, SiteKind, check_history};
use crate::records::{
    CheckpointRecord, CheckpointState, InstanceRecord, InstanceState, ParkRecord, created_key,
};
use crate::time::to_ms;

use super::{Engine, Incompatibility};

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
    }
}

/// Every status kind, in the order listings count them.
pub const STATUS_KINDS: [StatusKind; 10] = [
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
        Status::Cancelled => {}
    }
    Value::Object(out)
}

fn summary_json(s: &InstanceSummary) -> Value {
    json!({
        "id": s.id,
        "workflow": s.workflow,
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

    /// Everything about instance `id` as JSON, values decoded by the
    /// manifest it was written with: its status, input and output, its
    /// transitions, every step occurrence (kind, attempts, start, end,
    /// outcome, value or error), the events sent to it, and `current`:
    /// the step it stands at (running, retrying, sleeping or waiting).
    pub async fn history_json(&self, id: &str) -> Result<Value> {
        let record = self.record(id).await?;
        let history: History = self.core.history(id).await?;
        let backend = &self.core.services.backend;
        let checkpoints = backend.checkpoints(id).await?;
        let park = self.park_of(id).await?;
        let status = self.status_with_park(history.status.clone(), park.as_ref());
        let manifest = self.manifest_written_with(&record).await;
        let mut doc = Map::new();
        doc.insert("id".into(), id.into());
        doc.insert("workflow".into(), record.workflow.clone().into());
        doc.insert("version".into(), record.version.into());
        doc.insert(
            "manifest".into(),
            format!("{:016x}", record.manifest).into(),
        );
        doc.insert("status".into(), status_json(&status));
        doc.insert("created_at_ms".into(), record.created_at_ms.into());
        doc.insert(
            "updated_at_ms".into(),
            record
                .transitions
                .last()
                .map_or(record.created_at_ms, |t| t.at_ms)
                .into(),
        );
        put_value(
            &mut doc,
            "input",
            decode(manifest.as_ref().map(|m| &m.input), &record.input),
        );
        match &record.state {
            InstanceState::Returned { output, .. } | InstanceState::Completed { output } => {
                put_value(
                    &mut doc,
                    "output",
                    decode(manifest.as_ref().map(|m| &m.output), output),
                );
            }
            _ => {}
        }
        doc.insert(
            "transitions".into(),
            history
                .transitions
                .iter()
                .map(|t| {
                    let (kind, error) = match &t.kind {
                        TransitionKind::Started => ("started", None),
                        TransitionKind::Resumed => ("resumed", None),
                        TransitionKind::Blocked { error } => ("blocked", Some(error)),
                        TransitionKind::Completed => ("completed", None),
                        TransitionKind::Failed { error } => ("failed", Some(error)),
                        TransitionKind::Cancelled => ("cancelled", None),
                        TransitionKind::NeedsAttention { error } => {
                            ("needs-attention", Some(error))
                        }
                        TransitionKind::Incompatible { error } => ("incompatible", Some(error)),
                        TransitionKind::Retried { .. } => ("retried", None),
                        TransitionKind::Reopened { .. } => ("reopened", None),
                        TransitionKind::Paused { .. } => ("paused", None),
                        TransitionKind::Unpaused { .. } => ("unpaused", None),
                        TransitionKind::Deadline { .. } => ("deadline", None),
                        TransitionKind::DeadlinePassed { .. } => ("deadline-passed", None),
                        TransitionKind::Forked { .. } => ("forked", None),
                    };
                    let by = match &t.kind {
                        TransitionKind::Retried { by, .. }
                        | TransitionKind::Reopened { by, .. }
                        | TransitionKind::Paused { by }
                        | TransitionKind::Unpaused { by }
                        | TransitionKind::Forked { by, .. } => Some(by.clone()),
                        _ => None,
                    };
                    json!({"at_ms": ms(t.at), "kind": kind, "error": error, "by": by})
                })
                .collect(),
        );
        let by_site: HashMap<(&str, u32, Option<&str>), &CheckpointRecord> = checkpoints
            .iter()
            .map(|c| {
                (
                    (
                        c.name.as_str(),
                        c.occurrence,
                        c.key.as_ref().map(|k| k.1.as_str()),
                    ),
                    c,
                )
            })
            .collect();
        let mut steps = Vec::new();
        let mut current = Value::Null;
        for step in &history.steps {
            let site = manifest
                .as_ref()
                .and_then(|m| m.site(&step.name))
                .map(|(_, s)| s);
            let checkpoint = by_site
                .get(&(step.name.as_str(), step.occurrence, step.key.as_deref()))
                .copied();
            let kind = match (&step.outcome, site.map(|s| s.kind)) {
                (StepOutcome::Sleeping { .. }, _) => "sleep",
                (
                    StepOutcome::Waiting { .. }
                    | StepOutcome::Received { .. }
                    | StepOutcome::TimedOut,
                    _,
                ) => "wait",
                (_, Some(SiteKind::Wait)) => "wait",
                (_, Some(SiteKind::Sleep)) => "sleep",
                _ => "step",
            };
            let mut s = Map::new();
            s.insert("name".into(), step.name.clone().into());
            s.insert("occurrence".into(), step.occurrence.into());
            s.insert("key".into(), json!(step.key));
            s.insert("kind".into(), kind.into());
            s.insert("attempts".into(), step.attempts.into());
            s.insert("started_at_ms".into(), ms(step.started_at).into());
            s.insert("finished_at_ms".into(), json!(step.finished_at.map(ms)));
            let (outcome, unfinished) = match &step.outcome {
                StepOutcome::Value { .. } => ("ok", false),
                StepOutcome::Error { message, .. } => {
                    s.insert("error_text".into(), message.clone().into());
                    ("error", false)
                }
                StepOutcome::Retrying { last_error } => {
                    s.insert("last_error".into(), last_error.clone().into());
                    ("retrying", true)
                }
                StepOutcome::Panicked { message } => {
                    s.insert("error_text".into(), message.clone().into());
                    ("panicked", false)
                }
                StepOutcome::Sleeping { until } => {
                    s.insert("until_ms".into(), ms(*until).into());
                    let done = step.finished_at.is_some();
                    ("sleeping", !done)
                }
                StepOutcome::Waiting { until } => {
                    s.insert("until_ms".into(), ms(*until).into());
                    ("waiting", true)
                }
                StepOutcome::Received { .. } => ("received", false),
                StepOutcome::TimedOut => ("timed-out", false),
                StepOutcome::Expired { timeout } => {
                    s.insert("timeout_ms".into(), (timeout.as_millis() as u64).into());
                    ("expired", false)
                }
                StepOutcome::TooLarge { size, limit } => {
                    s.insert("size".into(), (*size).into());
                    s.insert("limit".into(), (*limit).into());
                    ("too-large", false)
                }
                StepOutcome::Running { attempt } => {
                    s.insert("attempt".into(), (*attempt).into());
                    ("running", true)
                }
            };
            s.insert("outcome".into(), outcome.into());
            if let Some(c) = checkpoint {
                self.put_checkpoint_value(&mut s, c, site.and_then(|s| s.types.as_ref()));
                if let CheckpointState::Sleeping { duration_ms, .. } = c.state {
                    s.insert("duration_ms".into(), duration_ms.into());
                }
            }
            let s = Value::Object(s);
            if unfinished && !status.is_finished() {
                current = s.clone();
            }
            steps.push(s);
        }
        // A wait not reached before parking has no checkpoint (no timeout):
        // the park record names it.
        if current.is_null()
            && let Status::Waiting { event, until } = &status
        {
            current = json!({"name": event, "kind": "wait", "outcome": "waiting",
                             "until_ms": until.map(ms)});
        }
        doc.insert("steps".into(), steps.into());
        doc.insert("current".into(), current);
        doc.insert(
            "events".into(),
            self.events_json(id, manifest.as_ref()).await?.into(),
        );
        Ok(Value::Object(doc))
    }

    /// [`history_json`](Self::history_json) of instance `id`: what `show`
    /// prints (the same document; `current` says where it stands).
    pub async fn instance_json(&self, id: &str) -> Result<Value> {
        self.history_json(id).await
    }

    fn put_checkpoint_value(
        &self,
        s: &mut Map<String, Value>,
        c: &CheckpointRecord,
        types: Option<&crate::manifest::SiteTypes>,
    ) {
        match &c.state {
            CheckpointState::Done {
                outcome,
                fingerprint,
                ..
            } => {
                let decoded = match types {
                    None => Err("the manifest has no types for this step".to_string()),
                    Some(t) if t.fingerprint() != *fingerprint => {
                        Err("written with types the manifest does not describe".into())
                    }
                    Some(t) => JsonShape::of_step(t)
                        .and_then(|shape| shape.decode(outcome))
                        .map_err(|e| e.to_string()),
                };
                match decoded {
                    Ok(Value::Object(mut m)) if m.len() == 1 => {
                        if let Some(v) = m.remove("Ok") {
                            s.insert("value".into(), v);
                        } else if let Some(e) = m.remove("Err") {
                            s.insert("error".into(), e);
                        }
                    }
                    Ok(other) => {
                        s.insert("value".into(), other);
                    }
                    Err(e) => {
                        s.insert("value_error".into(), e.into());
                    }
                }
            }
            CheckpointState::Received {
                payload,
                fingerprint,
                ..
            } => {
                let decoded = match types {
                    Some(t) if t.value.fingerprint == *fingerprint => {
                        decode(Some(&t.value), payload)
                    }
                    Some(_) => Err("written with a type the manifest does not describe".into()),
                    None => Err("the manifest has no type for this wait".into()),
                };
                put_value(s, "payload", decoded);
            }
            _ => {}
        }
    }

    /// The events stored for `id`, for each wait of its manifest: name,
    /// number, when sent, payload.
    async fn events_json(&self, id: &str, manifest: Option<&Manifest>) -> Result<Vec<Value>> {
        let backend = &self.core.services.backend;
        let mut out = Vec::new();
        for site in manifest.iter().flat_map(|m| &m.sites) {
            if site.kind != SiteKind::Wait {
                continue;
            }
            let mut seq = 0;
            while let Some(event) = backend.event(id, &site.name, seq).await? {
                let mut e = Map::new();
                e.insert("name".into(), site.name.clone().into());
                e.insert("seq".into(), seq.into());
                e.insert("sent_at_ms".into(), event.sent_at_ms.into());
                e.insert("shape".into(), event.shape.clone().into());
                let decoded = match &site.types {
                    Some(t) if t.value.fingerprint == event.fingerprint => {
                        decode(Some(&t.value), &event.payload)
                    }
                    _ => Err(format!("sent as `{}`", event.shape)),
                };
                put_value(&mut e, "payload", decoded);
                out.push(Value::Object(e));
                seq += 1;
            }
        }
        out.sort_by_key(|e| e["sent_at_ms"].as_u64());
        Ok(out)
    }

    /// Sends event `name` to instance `id` with a JSON payload, checked
    /// against the payload type of the workflow's `wait_for!` of that name
    /// and encoded exactly as [`send_event`](Self::send_event) encodes the
    /// typed value; then as `send_event`.
    ///
    /// Errors: those of `send_event`, and
    /// [`UsageError::InvalidJson`] when the workflow has no wait of that
    /// name or the value does not fit its payload type (nothing is stored).
    pub async fn send_event_json(&self, id: &str, name: &str, payload: &Value) -> Result<()> {
        let record = self.record(id).await?;
        crate::backend::embedded::ensure_unfinished(id, &record.state)?;
        let manifest = self.core.manifest_for(&record).await.ok_or_else(|| {
            invalid_json(
                format!("event {name:?}"),
                format!(
                    "the store holds no manifest for instance {id:?}, so the payload type is unknown"
                ),
            )
        })?;
        let shape = match manifest.site(name) {
            Some((_, site)) if site.kind == SiteKind::Wait => site.types.as_ref().map(|t| &t.value),
            _ => {
                let waits: Vec<&str> = manifest
                    .sites
                    .iter()
                    .filter(|s| s.kind == SiteKind::Wait)
                    .map(|s| s.name.as_str())
                    .collect();
                return Err(invalid_json(
                    format!("event {name:?}"),
                    format!(
                        "workflow {:?} has no `wait_for!({name:?})` (its waits: {})",
                        record.workflow,
                        if waits.is_empty() {
                            "none".to_string()
                        } else {
                            waits.join(", ")
                        }
                    ),
                ));
            }
        };
        let shape = shape.ok_or_else(|| {
            invalid_json(
                format!("event {name:?}"),
                "the manifest has no payload type for this wait".into(),
            )
        })?;
        let payload = JsonShape::parse(shape)
            .and_then(|s| s.encode(payload))
            .map_err(|e| invalid_json(format!("event {name:?}"), e.to_string()))?;
        Arc::clone(&self.core)
            .send_event(
                id.to_string(),
                name.to_string(),
                ("(sent as JSON)", Arc::new(shape.clone())),
                payload,
            )
            .await
    }

    /// Resumes instance `id` by its id alone, as
    /// [`resume`](Self::resume) does with the workflow's type: a blocked,
    /// needs-attention or incompatible instance is resumed (in the
    /// background); a running or finished one is left as it is.
    ///
    /// Errors: [`UsageError::NotFound`],
    /// [`InstanceError::Failed`](crate::InstanceError::Failed) for a failed
    /// instance, [`UsageError::NotRegistered`] when this engine does not
    /// register the instance's workflow version (an engine opened only to
    /// inspect a store runs nothing).
    pub async fn resume_instance(&self, id: &str) -> Result<()> {
        let record = self.record(id).await?;
        if let InstanceState::Failed { error } = &record.state {
            return Err(Error::Instance(crate::error::InstanceError::Failed {
                instance: id.to_string(),
                reason: format!("{error}; a failed instance cannot be resumed, start a new one"),
            }));
        }
        let Some((workflow, erased)) = self.core.registry.for_record(&record) else {
            return Err(Error::Usage(UsageError::NotRegistered {
                workflow: format!("{} (version {})", record.workflow, record.version),
            }));
        };
        let _done = Arc::clone(&self.core)
            .start_or_attach(
                workflow,
                erased,
                id.to_string(),
                record.input,
                super::instances::Run {
                    manual: true,
                    here: true,
                },
                None,
            )
            .await?;
        Ok(())
    }

    /// The deploy gate against manifests of another build (read with
    /// [`Manifest::from_text`], e.g. the snapshot file its tests keep):
    /// every unfinished instance in the store that those manifests cannot
    /// run, and why (its workflow version is missing from them, or its
    /// recorded history does not fit). Reads the store only.
    pub async fn compatibility_with(&self, manifests: &[Manifest]) -> Result<Vec<Incompatibility>> {
        let backend = &self.core.services.backend;
        let mut out = Vec::new();
        for manifest in manifests {
            for untraceable in manifest.untraceable() {
                out.push(Incompatibility {
                    instance: None,
                    workflow: manifest.workflow.clone(),
                    reason: format!(
                        "{untraceable}: its type could not be traced and is compared by its Rust name only"
                    ),
                });
            }
        }
        for id in backend.unfinished().await? {
            let Some(record) = backend.load(&id).await? else {
                continue;
            };
            let Some(current) = manifests
                .iter()
                .find(|m| m.workflow == record.workflow && m.version == record.version)
            else {
                out.push(Incompatibility {
                    instance: Some(id),
                    workflow: record.workflow.clone(),
                    reason: format!(
                        "workflow {:?} version {} is not in the new build's manifests",
                        record.workflow, record.version
                    ),
                });
                continue;
            };
            if current.hash() == record.manifest {
                continue;
            }
            let checkpoints = backend.checkpoints(&id).await?;
            let started = backend.manifest(record.manifest).await.ok().flatten();
            let recorded = Recorded {
                checkpoints: &checkpoints,
                events: backend.events_of(&id).await?,
            };
            if let Err(reason) = check_history(current, started.as_ref(), &recorded) {
                out.push(Incompatibility {
                    instance: Some(id),
                    workflow: record.workflow,
                    reason,
                });
            }
        }
        Ok(out)
    }
}
