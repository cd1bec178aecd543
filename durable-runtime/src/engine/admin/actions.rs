//! The operator's writes by id alone: an event sent as JSON, a resume;
//! and the deploy gate against manifests read from a file.

use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result, UsageError};
use crate::json::JsonShape;
use crate::manifest::{Manifest, Recorded, SiteKind, check_history};
use crate::records::InstanceState;

use super::super::{Engine, Incompatibility};
use super::invalid_json;

impl Engine {
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
                super::super::instances::Run {
                    manual: true,
                    here: true,
                },
                super::super::instances::Birth::default(),
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
