//! The registry: workflows by name, with their types erased so the engine
//! can resume instances it only knows by name.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::Arc;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::future::BoxFuture;
use crate::journal::decode_value;
use crate::retry::RetryPolicy;
use crate::workflow::Workflow;

/// A registered workflow with its types erased.
pub(super) trait Erased: Send + Sync {
    fn type_id(&self) -> TypeId;
    fn policy(&self) -> Option<RetryPolicy>;
    /// Runs the workflow; its encoded output, and whether it is an `Err`.
    fn run<'a>(&self, ctx: &'a Ctx, input: &'a [u8]) -> BoxFuture<'a, Result<(Vec<u8>, bool)>>;
}

struct Registered<W>(W);

impl<W: Workflow> Erased for Registered<W> {
    fn type_id(&self) -> TypeId {
        TypeId::of::<W>()
    }

    fn policy(&self) -> Option<RetryPolicy> {
        self.0.retry_policy()
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
            let bytes = ctx
                .services
                .journal
                .encode_value(&ctx.id, "output", &output)?;
            Ok((bytes, crate::outcome::is_err(&output)))
        })
    }
}

/// A workflow handed to the builder, not yet checked against the others.
pub(super) type Entry = (&'static str, Arc<dyn Erased>);

/// Wraps `workflow` for the registry.
pub(super) fn entry<W: Workflow>(workflow: W) -> Entry {
    (W::NAME, Arc::new(Registered(workflow)))
}

/// Every registered workflow, by name.
#[derive(Default)]
pub(super) struct Registry {
    by_name: HashMap<&'static str, Arc<dyn Erased>>,
}

impl Registry {
    /// The registry of `entries`; [`UsageError::DuplicateWorkflow`](crate::UsageError::DuplicateWorkflow) if two
    /// different workflows share a name.
    pub(super) fn build(entries: Vec<Entry>) -> Result<Registry> {
        let mut by_name: HashMap<&'static str, Arc<dyn Erased>> = HashMap::new();
        for (name, erased) in entries {
            if let Some(existing) = by_name.get(name)
                && existing.type_id() != erased.type_id()
            {
                return Err(Error::Usage(crate::error::UsageError::DuplicateWorkflow {
                    workflow: name.to_string(),
                }));
            }
            by_name.insert(name, erased);
        }
        Ok(Registry { by_name })
    }

    /// Workflow `W`, if this very definition is registered.
    pub(super) fn get<W: Workflow>(&self) -> Result<Arc<dyn Erased>> {
        match self.by_name.get(W::NAME) {
            Some(erased) if erased.type_id() == TypeId::of::<W>() => Ok(Arc::clone(erased)),
            _ => Err(Error::Usage(crate::error::UsageError::NotRegistered {
                workflow: W::NAME.to_string(),
            })),
        }
    }

    /// The workflow registered under `name`, with the name as registered.
    pub(super) fn by_name(&self, name: &str) -> Option<(&'static str, Arc<dyn Erased>)> {
        self.by_name
            .get_key_value(name)
            .map(|(k, v)| (*k, Arc::clone(v)))
    }
}
