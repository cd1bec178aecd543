//! Safe evolution, the engine's side: an instance's recorded history is
//! checked against the registered manifest before any body runs
//! ([`Core::admit`]), events are checked against the manifest when sent,
//! manifests are kept in the store, and [`Engine::compatibility`] is the
//! deploy gate. The checks themselves live in `crate::manifest`.

use crate::error::{Error, ReplayError, Result};
use crate::manifest::{Manifest, Recorded, SiteKind, check_history};
use crate::records::{CheckpointRecord, InstanceRecord};

use super::{Core, Engine};

/// One finding of [`Engine::compatibility`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// The unfinished instance this build cannot run; `None` for a finding
    /// about the registered code itself (an untraceable type).
    pub instance: Option<String>,
    /// The workflow's name.
    pub workflow: String,
    /// What is wrong, site by site.
    pub reason: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.instance {
            Some(id) => write!(f, "instance {id:?} of {:?}: {}", self.workflow, self.reason),
            None => write!(f, "workflow {:?}: {}", self.workflow, self.reason),
        }
    }
}

impl Engine {
    /// The deploy gate: every unfinished instance in the store that the
    /// registered code cannot run, with the reason (a recorded site that is
    /// gone or changed, a new site before one it already passed, a workflow
    /// version that is not registered), and every registered site whose
    /// type could not be traced (compared by its Rust type name only).
    /// Empty means this build can resume everything in the store.
    ///
    /// Reads the store only; nothing is changed.
    pub async fn compatibility(&self) -> Result<Vec<Incompatibility>> {
        self.core.compatibility().await
    }
}

impl Core {
    /// `ReplayError::Incompatible` if what instance `id` recorded does not fit
    /// `manifest`, the code about to run it (see `manifest::check_history`).
    /// Otherwise the patches of the manifest it started with when that is
    /// another one (`None`: it started on this code).
    pub(super) async fn admit(
        &self,
        id: &str,
        record: &InstanceRecord,
        (manifest, hash): &(Manifest, u64),
        checkpoints: &[CheckpointRecord],
    ) -> Result<Option<Vec<String>>> {
        if record.manifest == *hash {
            return Ok(None);
        }
        let backend = &self.services.backend;
        let started = backend.manifest(record.manifest).await.ok().flatten();
        let recorded = Recorded {
            checkpoints,
            events: backend.events_of(id).await?,
        };
        check_history(manifest, started.as_ref(), &recorded).map_err(|reason| {
            Error::Replay(ReplayError::Incompatible {
                instance: id.to_string(),
                workflow: record.workflow.clone(),
                reason,
            })
        })?;
        Ok(Some(started.map_or_else(Vec::new, |m| {
            m.sites
                .iter()
                .filter(|s| s.kind == SiteKind::Patch)
                .map(|s| s.name.clone())
                .collect()
        })))
    }

    /// The manifest instance `record` runs on here, or else the one it
    /// started with if the store has it.
    pub(super) async fn manifest_for(&self, record: &InstanceRecord) -> Option<Manifest> {
        if let Some((_, erased)) = self.registry.for_record(record) {
            return Some(erased.manifest().0.clone());
        }
        self.services
            .backend
            .manifest(record.manifest)
            .await
            .ok()
            .flatten()
    }

    /// Stores every registered manifest the store does not hold yet, so
    /// that later builds can read what an instance started with.
    pub(super) async fn store_manifests(&self) -> Result<()> {
        let all = self.registry.all();
        let manifests: Vec<&Manifest> = all.iter().map(|(_, e)| &e.manifest().0).collect();
        self.services.backend.store_manifests(&manifests).await
    }

    async fn compatibility(&self) -> Result<Vec<Incompatibility>> {
        let backend = &self.services.backend;
        let mut out = Vec::new();
        for ((name, _), erased) in self.registry.all() {
            for untraceable in erased.manifest().0.untraceable() {
                out.push(Incompatibility {
                    instance: None,
                    workflow: name.to_string(),
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
            let reason = match self.registry.for_record(&record) {
                None => Some(self.registry.not_registered(&record)),
                Some((_, erased)) => {
                    let checkpoints = backend.checkpoints(&id).await?;
                    match self
                        .admit(&id, &record, erased.manifest(), &checkpoints)
                        .await
                    {
                        Err(Error::Replay(ReplayError::Incompatible { reason, .. })) => {
                            Some(reason)
                        }
                        Err(e) => return Err(e),
                        Ok(_) => None,
                    }
                }
            };
            if let Some(reason) = reason {
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
