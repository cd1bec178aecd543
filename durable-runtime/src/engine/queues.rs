//! Queues with flow control: instances enqueued on a named queue wait there
//! (created, held from every claim) until a dispatch takes them, under the
//! queue's lock in the store, as far as its limits allow: a concurrency
//! limit across every worker (per partition key too), a rate limit, and a
//! per-worker limit (in this process). Lower priority numbers go first,
//! then enqueue order; an instance is not dispatched before its
//! `not_before` time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::backend::{Claim, Queued};
use crate::error::{Error, Result, UsageError};
use crate::ids::{check_conflict, validate_id};
use crate::records::{InstanceRecord, TransitionKind, TransitionRecord};
use crate::workflow::{IntoWorkflow, Workflow};

use super::driver::Begin;
use super::handle::{Handle, outcome_of};
use super::instances::{Birth, Outcome, Reserved};
use super::{Core, Engine, In, Out};
use crate::queue::{EnqueueOptions, Queue, QueueInfo};

/// How often the dispatch loop looks at the queues of an embedded store
/// when no hint comes (a delay or a rate window may have passed); on a
/// shared store, the store's poll interval.
const DISPATCH_POLL: Duration = Duration::from_millis(50);

/// The queues of an engine and what this process dispatched.
#[derive(Default)]
pub(super) struct Queues {
    pub specs: Vec<Queue>,
    /// Ids this process dispatched, by queue: the per-worker limit counts
    /// those it still drives.
    local: Mutex<HashMap<String, Vec<String>>>,
    /// Rung by a local enqueue.
    pub bell: tokio::sync::Notify,
}

impl Queues {
    /// The declared queues, checked.
    pub(super) fn build(specs: Vec<Queue>) -> Result<Queues> {
        for (i, q) in specs.iter().enumerate() {
            q.check()?;
            if specs[..i].iter().any(|p| p.name == q.name) {
                return Err(Error::Usage(UsageError::InvalidQueue {
                    queue: q.name.clone(),
                    reason: "declared twice".into(),
                }));
            }
        }
        Ok(Queues {
            specs,
            ..Queues::default()
        })
    }

    fn spec(&self, name: &str) -> Result<&Queue> {
        self.specs.iter().find(|q| q.name == name).ok_or_else(|| {
            Error::Usage(UsageError::UnknownQueue {
                queue: name.to_string(),
            })
        })
    }
}

impl Engine {
    /// Enqueues instance `id` of `workflow` on queue `queue` with default
    /// [`EnqueueOptions`]; see [`enqueue_with`](Self::enqueue_with).
    pub async fn enqueue<I: IntoWorkflow>(
        &self,
        queue: &str,
        workflow: I,
        id: impl Into<String>,
        input: In<I>,
    ) -> Result<Handle<Out<I>>> {
        self.enqueue_with(queue, workflow, id, input, EnqueueOptions::new())
            .await
    }

    /// Enqueues instance `id` of `workflow` on queue `queue` (declared with
    /// [`EngineBuilder::queue`](crate::EngineBuilder::queue)): it is
    /// recorded durably at once, and runs when a dispatch on some worker
    /// takes it within the queue's limits. The handle resolves when it
    /// finishes. As with `start`, an id that exists attaches to it (or is
    /// [`UsageError::IdConflict`] with another workflow or input).
    ///
    /// ```
    /// # use durable_runtime::{Engine, EnqueueOptions, IntoWorkflow, Workflow};
    /// # async fn demo<W: IntoWorkflow>(engine: Engine, send: W)
    /// # -> durable_runtime::Result<()>
    /// # where W::Workflow: Workflow<Input = String> {
    /// let options = EnqueueOptions::new().priority(1).partition("tenant-7").dedup("welcome-42");
    /// let handle = engine
    ///     .enqueue_with("emails", send, "welcome-42", "ada@example.com".to_string(), options)
    ///     .await?;
    /// let _output = handle.result().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enqueue_with<I: IntoWorkflow>(
        &self,
        queue: &str,
        workflow: I,
        id: impl Into<String>,
        input: In<I>,
        options: EnqueueOptions,
    ) -> Result<Handle<Out<I>>> {
        let mut handles = self
            .enqueue_inner(queue, workflow, vec![(id.into(), input, options)])
            .await?;
        Ok(handles.remove(0))
    }

    /// Enqueues one instance of `workflow` per `(id, input)` of `items` on
    /// `queue` with default options, recorded in one durable write (like
    /// [`start_many`](Self::start_many)); handles in the same order.
    pub async fn enqueue_many<I, S>(
        &self,
        queue: &str,
        workflow: I,
        items: impl IntoIterator<Item = (S, In<I>)>,
    ) -> Result<Vec<Handle<Out<I>>>>
    where
        I: IntoWorkflow,
        S: Into<String>,
    {
        let items = items
            .into_iter()
            .map(|(id, input)| (id.into(), input, EnqueueOptions::new()))
            .collect();
        self.enqueue_inner(queue, workflow, items).await
    }

    /// Every queue with its counts of pending and running instances (from
    /// the store: every worker's): those declared on this engine with
    /// their limits, then those the store knows of that this engine did
    /// not declare (with the limits another worker dispatched them with,
    /// where the store keeps them: PostgreSQL).
    pub async fn queues(&self) -> Result<Vec<QueueInfo>> {
        let mut stats = self.core.services.backend.queue_stats().await?;
        let mut infos = Vec::new();
        for queue in &self.core.queues.specs {
            let (pending, running) = match stats.iter().position(|s| s.name == queue.name) {
                Some(i) => {
                    let s = stats.remove(i);
                    (s.pending, s.running)
                }
                None => (0, 0),
            };
            infos.push(QueueInfo {
                queue: queue.clone(),
                pending,
                running,
                declared: true,
            });
        }
        for s in stats {
            infos.push(QueueInfo {
                queue: s.limits.unwrap_or_else(|| Queue::new(s.name.clone())),
                pending: s.pending,
                running: s.running,
                declared: false,
            });
        }
        Ok(infos)
    }

    async fn enqueue_inner<I: IntoWorkflow>(
        &self,
        queue: &str,
        workflow: I,
        items: Vec<(String, In<I>, EnqueueOptions)>,
    ) -> Result<Vec<Handle<Out<I>>>> {
        type W<I> = <I as IntoWorkflow>::Workflow;
        let name = W::<I>::NAME;
        self.core.queues.spec(queue)?;
        let (erased, _) = self.to_start(workflow).await?;
        let deadline = self.deadline_of::<W<I>>(None);
        let now = self.core.services.clock.now_ms();
        let mut records: Vec<(String, InstanceRecord)> = Vec::new();
        let mut order: Vec<String> = Vec::new();
        for (id, input, options) in items {
            validate_id(&id)?;
            let input = self.core.services.encode_value(&id, "input", &input)?;
            order.push(id.clone());
            if let Some((_, other)) = records.iter().find(|(other, _)| *other == id) {
                // An id listed twice is one instance.
                check_conflict(&id, name, &input, name, &other.input)?;
                continue;
            }
            let mut record =
                self.core
                    .fresh_record(name, &*erased, input, Birth::deadline(deadline));
            record.transitions.push(TransitionRecord {
                at_ms: now,
                kind: TransitionKind::Enqueued(options.entry(queue, now)),
            });
            records.push((id, record));
        }
        let answers = self.core.services.backend.enqueue_many(&records).await?;
        self.core.queues.bell.notify_one();
        let mut done: HashMap<String, watch::Receiver<Outcome>> = HashMap::new();
        let mut first_error = None;
        for ((id, record), answer) in records.iter().zip(answers) {
            match self.core.after_enqueue(name, id, record, answer) {
                Ok(rx) => {
                    done.insert(id.clone(), rx);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(order
            .into_iter()
            .map(|id| {
                let rx = done[&id].clone();
                Handle::new(id, rx, &self.core)
            })
            .collect())
    }
}

impl Core {
    /// A handle's receiver for enqueued `id` after the store answered.
    fn after_enqueue(
        &self,
        workflow: &'static str,
        id: &str,
        record: &InstanceRecord,
        answer: Queued,
    ) -> Result<watch::Receiver<Outcome>> {
        if let Queued::Duplicate(existing) = answer {
            let (queue, dedup) = match record.queue_entry() {
                Some((e, _)) => (e.queue.clone(), e.dedup.clone().unwrap_or_default()),
                None => Default::default(),
            };
            return Err(Error::Usage(UsageError::Duplicate {
                queue,
                dedup,
                existing,
            }));
        }
        let rx = match self.reserve(workflow, id, &record.input)? {
            Reserved::Attached(rx) => return Ok(rx),
            Reserved::Slot(slot) => {
                // Driven by whoever dispatches it; its end resolves the slot.
                slot.driving.give_up();
                slot.done.subscribe()
            }
        };
        if let Queued::Exists(existing) = answer {
            let slot = self.instances.get(id);
            let checked = check_conflict(
                id,
                workflow,
                &record.input,
                &existing.workflow,
                &existing.input,
            );
            if let Some(slot) = slot {
                if let Err(e) = checked {
                    self.finish_slot(id, &slot, Err(e.clone()));
                    return Err(e);
                }
                if let Some(outcome) = outcome_of(id, &existing, false) {
                    self.finish_slot(id, &slot, outcome);
                }
            }
        }
        Ok(rx)
    }

    /// One dispatch round over every queue: takes what the limits allow
    /// and drives it here.
    async fn dispatch_round(self: &Arc<Self>) -> Result<()> {
        for spec in &self.queues.specs {
            let room = match spec.per_worker {
                Some(limit) => {
                    let mut local = self.queues.local.lock().unwrap_or_else(|e| e.into_inner());
                    let ids = local.entry(spec.name.clone()).or_default();
                    ids.retain(|id| self.instances.get(id).is_some_and(|s| s.driving.active()));
                    (limit as usize).saturating_sub(ids.len())
                }
                None => usize::MAX,
            };
            if room == 0 {
                continue;
            }
            let claims = self
                .services
                .backend
                .dispatch(spec, self.registry.runnable(), room)
                .await?;
            for claim in claims {
                if spec.per_worker.is_some() {
                    self.queues
                        .local
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(spec.name.clone())
                        .or_default()
                        .push(claim.id.clone());
                }
                self.drive_dispatched(claim).await;
            }
        }
        Ok(())
    }

    /// Drives dispatched instance `claim` on a task of its own.
    async fn drive_dispatched(self: &Arc<Self>, claim: Claim) {
        let slot = self.take_slot(&claim);
        match slot {
            Some(slot) => Arc::clone(self).run_claim(claim, Begin::Wake, slot),
            None => {
                let _ = self.services.backend.release(&claim.id, claim.lease).await;
            }
        }
    }

    /// The dispatch loop: a round whenever something is enqueued here, a
    /// hint comes from the backend (an instance ended, something was
    /// enqueued elsewhere), or `poll` passes (default [`DISPATCH_POLL`]);
    /// until the engine is gone.
    pub(super) async fn dispatch_loop(core: Weak<Core>, poll: Option<Duration>) {
        let poll = poll.unwrap_or(DISPATCH_POLL);
        let Some(mut notices) = core.upgrade().map(|c| c.services.backend.subscribe()) else {
            return;
        };
        loop {
            {
                let Some(core) = core.upgrade() else { return };
                if core.queues.specs.is_empty() {
                    return;
                }
                if let Err(e) = core.dispatch_round().await {
                    tracing::warn!(durable.error = %e, "dispatch round failed; retrying at the next poll");
                }
            }
            let bell = async {
                match core.upgrade() {
                    Some(c) => c.queues.bell.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                notice = notices.recv() => if let Err(RecvError::Closed) = notice { return },
                _ = bell => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}
