//! The registry: workflows by name and version, with their types erased so
//! the engine can resume instances it only knows by name, and each one's
//! manifest, built once at registration.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::Arc;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::future::BoxFuture;
use crate::journal::decode_value;
use crate::manifest::Manifest;
use crate::records::InstanceRecord;
use crate::retry::RetryPolicy;
use crate::workflow::Workflow;

/// A registered workflow with its types erased.
pub(crate) trait Erased: Send + Sync {
    fn type_id(&self) -> TypeId;
    fn policy(&self) -> Option<RetryPolicy>;
    /// Whether the workflow has compensations (`Workflow::COMPENSATES`).
    fn compensates(&self) -> bool;
    /// The workflow's manifest and its hash.
    fn manifest(&self) -> &(Manifest, u64);
    /// The workflow's version.
    fn version(&self) -> u32;
    /// The workflow's own whole-workflow deadline, in milliseconds from an
    /// instance's start (`#[durable(timeout = ..)]`).
    fn timeout_ms(&self) -> Option<u64>;
    /// Runs the workflow; its encoded output, and whether it is an `Err`.
    fn run<'a>(&self, ctx: &'a Ctx, input: &'a [u8]) -> BoxFuture<'a, Result<(Vec<u8>, bool)>>;
}

struct Registered<W>(W, (Manifest, u64));

impl<W: Workflow> Erased for Registered<W> {
    fn type_id(&self) -> TypeId {
        TypeId::of::<W>()
    }

    fn manifest(&self) -> &(Manifest, u64) {
        &self.1
    }

    fn version(&self) -> u32 {
        W::VERSION
    }

    fn timeout_ms(&self) -> Option<u64> {
        W::TIMEOUT_MS
    }

    fn policy(&self) -> Option<RetryPolicy> {
        self.0.retry_policy()
    }

    fn compensates(&self) -> bool {
        W::COMPENSATES
    }

    fn run<'a>(&self, ctx: &'a Ctx, input: &'a [u8]) -> BoxFuture<'a, Result<(Vec<u8>, bool)>> {
        let workflow = self.0;
        Box::pin(async move {
            let input: W::Input = decode_value(input).map_err(|reason| {
                Error::Replay(crate::error::ReplayError::ValueDecode {
                    instance: ctx.id.clone(),
                    what: "input",
                    expected_type: std::any::type_name::<W::Input>(),
                    reason,
                })
            })?;
            let output = workflow.run(ctx, input).await;
            let bytes = ctx.services.encode_value(&ctx.id, "output", &output)?;
            Ok((bytes, crate::outcome::is_err(&output)))
        })
    }
}

/// A workflow handed to the builder, not yet checked against the others.
pub(crate) type Entry = (&'static str, Arc<dyn Erased>);

/// Wraps `workflow` for the registry.
pub(crate) fn entry<W: Workflow>(workflow: W) -> Entry {
    let manifest = workflow.manifest();
    let hash = manifest.hash();
    (W::NAME, Arc::new(Registered(workflow, (manifest, hash))))
}

/// A workflow's name and version.
pub(super) type Key = (&'static str, u32);

/// Every registered workflow, by name and version.
#[derive(Default)]
pub(super) struct Registry {
    by_name: HashMap<(&'static str, u32), Arc<dyn Erased>>,
    /// The keys of `by_name`: what this process can run.
    runnable: Vec<(&'static str, u32)>,
}

impl Registry {
    /// The registry of `entries`; [`UsageError::DuplicateWorkflow`](crate::UsageError::DuplicateWorkflow) if two
    /// different workflows share a name and version.
    pub(super) fn build(entries: Vec<Entry>) -> Result<Registry> {
        let mut by_name: HashMap<(&'static str, u32), Arc<dyn Erased>> = HashMap::new();
        for (name, erased) in entries {
            let key = (name, erased.version());
            if let Some(existing) = by_name.get(&key)
                && existing.type_id() != erased.type_id()
            {
                return Err(Error::Usage(crate::error::UsageError::DuplicateWorkflow {
                    workflow: name.to_string(),
                }));
            }
            by_name.insert(key, erased);
        }
        let mut runnable: Vec<_> = by_name.keys().copied().collect();
        runnable.sort_unstable();
        Ok(Registry { by_name, runnable })
    }

    /// Every registered (name, version): the instances this process claims.
    pub(super) fn runnable(&self) -> &[(&'static str, u32)] {
        &self.runnable
    }

    /// Workflow `W`, if this very definition is registered.
    pub(super) fn get<W: Workflow>(&self) -> Result<Arc<dyn Erased>> {
        match self.by_name.get(&(W::NAME, W::VERSION)) {
            Some(erased) if erased.type_id() == TypeId::of::<W>() => Ok(Arc::clone(erased)),
            _ => Err(Error::Usage(crate::error::UsageError::NotRegistered {
                workflow: W::NAME.to_string(),
            })),
        }
    }

    /// The registered workflow of this name and version, if it is this
    /// very definition (`type_id`).
    pub(super) fn get_by(
        &self,
        name: &'static str,
        version: u32,
        type_id: TypeId,
    ) -> Option<Arc<dyn Erased>> {
        self.by_name
            .get(&(name, version))
            .filter(|erased| erased.type_id() == type_id)
            .cloned()
    }

    /// The version of the workflow instance `record` started on, with the
    /// name as registered.
    pub(super) fn for_record(
        &self,
        record: &InstanceRecord,
    ) -> Option<(&'static str, Arc<dyn Erased>)> {
        self.by_name
            .iter()
            .find(|((name, version), _)| *name == record.workflow && *version == record.version)
            .map(|((name, _), erased)| (*name, Arc::clone(erased)))
    }

    /// The registered workflow named `name`: version `version` if it is
    /// registered, else the newest registered version.
    pub(super) fn named(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Option<(&'static str, Arc<dyn Erased>)> {
        let exact = version.and_then(|v| {
            self.by_name
                .iter()
                .find(|((n, ver), _)| *n == name && *ver == v)
        });
        exact
            .or_else(|| {
                self.by_name
                    .iter()
                    .filter(|((n, _), _)| *n == name)
                    .max_by_key(|((_, v), _)| *v)
            })
            .map(|((n, _), erased)| (*n, Arc::clone(erased)))
    }

    /// Why instance `record` has no registered workflow here.
    pub(super) fn not_registered(&self, record: &InstanceRecord) -> String {
        let mut others: Vec<u32> = self
            .by_name
            .keys()
            .filter(|(name, _)| *name == record.workflow)
            .map(|(_, v)| *v)
            .collect();
        others.sort_unstable();
        if others.is_empty() {
            format!("workflow {:?} is not registered", record.workflow)
        } else {
            let others: Vec<String> = others.iter().map(u32::to_string).collect();
            format!(
                "workflow {:?} version {} is not registered (this build registers version {})",
                record.workflow,
                record.version,
                others.join(", ")
            )
        }
    }

    /// Every registered workflow, sorted by name and version.
    pub(super) fn all(&self) -> Vec<(Key, Arc<dyn Erased>)> {
        let mut all: Vec<_> = self
            .by_name
            .iter()
            .map(|(k, v)| (*k, Arc::clone(v)))
            .collect();
        all.sort_by_key(|(k, _)| *k);
        all
    }
}
