//! Starting many instances at once: every new one recorded in one durable
//! write (one fsync on the embedded store, one transaction on PostgreSQL),
//! instead of one write per `start`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::Created;
use crate::error::{Error, Result};
use crate::ids::{check_conflict, validate_id};
use crate::records::InstanceRecord;
use crate::workflow::{IntoWorkflow, Workflow};

use super::handle::Handle;
use super::instances::{Birth, Outcome, Reserved, Run, Slot};
use super::{Engine, In, Out};

/// The most instances recorded in one write; a longer list is written in
/// groups of this many.
const MAX_GROUP: usize = 10_000;

impl Engine {
    /// Starts (or attaches to) one instance of `workflow` per `(id, input)`
    /// of `items`, and returns their handles in the same order. The new
    /// instances are recorded in one durable write (per 10,000), so a
    /// backfill or a fan-out pays one fsync, not one per instance; each
    /// then runs as if started with [`start`](Self::start).
    ///
    /// Every id and input is checked before anything is written (an
    /// invalid id or an input over the size limit writes nothing). As with
    /// `start`, an id that names an existing instance with the same
    /// workflow and input attaches to it, and an id listed twice with the
    /// same input gets the same instance; with another workflow or input it
    /// is [`UsageError::IdConflict`](crate::UsageError::IdConflict). A
    /// conflict found in the store is reported after the other instances
    /// were recorded: calling again with the same items attaches to them.
    ///
    /// ```
    /// # use durable_runtime::{Engine, IntoWorkflow, Workflow};
    /// # async fn demo<W: IntoWorkflow>(engine: Engine, backfill: W)
    /// # -> durable_runtime::Result<()>
    /// # where W::Workflow: Workflow<Input = u64> {
    /// let items = (0..2_000u64).map(|n| (format!("backfill-{n}"), n));
    /// let handles = engine.start_many(backfill, items).await?;
    /// for handle in handles {
    ///     let _output = handle.result().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_many<I, S>(
        &self,
        workflow: I,
        items: impl IntoIterator<Item = (S, In<I>)>,
    ) -> Result<Vec<Handle<Out<I>>>>
    where
        I: IntoWorkflow,
        S: Into<String>,
    {
        type W<I> = <I as IntoWorkflow>::Workflow;
        let name = W::<I>::NAME;
        // Check and encode everything first: nothing is written on a bad item.
        let mut ids: Vec<String> = Vec::new();
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for (id, input) in items {
            let id = id.into();
            validate_id(&id)?;
            let input = self.core.services.encode_value(&id, "input", &input)?;
            ids.push(id);
            inputs.push(input);
        }
        // An id listed twice is one instance.
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            if let Some(&j) = first.get(id.as_str()) {
                check_conflict(id, name, &inputs[i], name, &inputs[j])?;
            } else {
                first.insert(id, i);
            }
        }
        let (erased, here) = self.to_start(workflow).await?;
        let deadline = self.deadline_of::<W<I>>(None);
        let run = Run {
            manual: false,
            here,
        };

        // Reserve the slots of the distinct ids (attach to those this
        // process already has).
        let mut done: HashMap<String, watch::Receiver<Outcome>> = HashMap::new();
        let mut to_create: Vec<(Arc<Slot>, String, InstanceRecord)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if first.get(id.as_str()) != Some(&i) {
                continue;
            }
            match self.core.reserve(name, id, &inputs[i]) {
                Ok(Reserved::Attached(rx)) => {
                    done.insert(id.clone(), rx);
                }
                Ok(Reserved::Slot(slot)) => {
                    done.insert(id.clone(), slot.done.subscribe());
                    let fresh = self.core.fresh_record(
                        name,
                        &*erased,
                        inputs[i].clone(),
                        Birth::deadline(deadline),
                    );
                    to_create.push((slot, id.clone(), fresh));
                }
                Err(e) => {
                    // Let go of the slots reserved so far.
                    for (slot, id, _) in &to_create {
                        self.core.finish_slot(id, slot, Err(e.clone()));
                    }
                    return Err(e);
                }
            }
        }

        // One write per group, then each instance as `start` would have it.
        let mut first_error: Option<Error> = None;
        let mut pending = to_create.into_iter().peekable();
        while pending.peek().is_some() {
            let group: Vec<(Arc<Slot>, String, InstanceRecord)> =
                pending.by_ref().take(MAX_GROUP).collect();
            let records: Vec<(String, InstanceRecord)> = group
                .iter()
                .map(|(_, id, fresh)| (id.clone(), fresh.clone()))
                .collect();
            crate::crash::point("start.before_record");
            let backend = &self.core.services.backend;
            let created = match run.here {
                true => backend.create_many(&records).await,
                false => backend.create_unclaimed(&records).await,
            };
            let mut answers: Vec<Result<Created>> = match created {
                Ok(answers) => answers.into_iter().map(Ok).collect(),
                Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
            };
            for ((slot, id, fresh), answer) in group.into_iter().zip(answers.drain(..)) {
                let settled = Arc::clone(&self.core)
                    .settle(Arc::clone(&erased), id, fresh, slot, run, answer)
                    .await;
                if let Err(e) = settled
                    && first_error.is_none()
                {
                    first_error = Some(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(ids
            .into_iter()
            .map(|id| {
                let rx = done[&id].clone();
                Handle::new(id, rx, &self.core)
            })
            .collect())
    }
}
