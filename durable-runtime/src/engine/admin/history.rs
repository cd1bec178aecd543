//! An instance's whole story as JSON: status, values decoded by their
//! manifest shape, transitions, steps, events and where it stands.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::error::Result;
use crate::inspect::{History, Status, StepOutcome, TransitionKind};
use crate::json::JsonShape;
use crate::manifest::{Manifest, SiteKind};
use crate::records::{CheckpointRecord, CheckpointState, InstanceState};

use super::super::Engine;
use super::{decode, ms, put_value, status_json};

impl Engine {
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
        doc.insert("parent".into(), json!(history.parent));
        doc.insert("children".into(), json!(history.children));
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
                        TransitionKind::CancelRequested { .. } => ("cancel-requested", None),
                        TransitionKind::Compensated { .. } => ("compensated", None),
                        TransitionKind::CompensationFailed { error, .. } => {
                            ("compensation-failed", Some(error))
                        }
                        TransitionKind::ChildOf { .. } => ("child-of", None),
                        TransitionKind::Enqueued { .. } => ("enqueued", None),
                        TransitionKind::Dispatched => ("dispatched", None),
                    };
                    let by = match &t.kind {
                        TransitionKind::Retried { by, .. }
                        | TransitionKind::Reopened { by, .. }
                        | TransitionKind::Paused { by }
                        | TransitionKind::Unpaused { by }
                        | TransitionKind::Forked { by, .. }
                        | TransitionKind::CancelRequested { by } => Some(by.clone()),
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
}
