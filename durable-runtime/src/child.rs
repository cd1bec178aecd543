//! Child workflows: a workflow starts another ([`Ctx::start_child`]) and
//! awaits its result ([`Child::result`]), or fans out over many with a
//! bound on how many run at once ([`Ctx::run_children`]).
//!
//! Both are checkpointed like steps, under reserved names:
//!
//! - `durable::start_child`, numbered by occurrence: its outcome names the
//!   child (id, workflow, whether it goes with the parent). The child is
//!   created with create-if-absent before the checkpoint is written, so a
//!   crash in between re-creates nothing: the replay finds the child and
//!   attaches to it. A replay that finds the checkpoint starts nothing.
//! - `durable::child_result`, keyed by the child's id: how the child ended
//!   (its output, its failure, or its cancellation). A replay reads it back
//!   without looking at the child again.
//!
//! A child's id is `{parent id}/{workflow name}-{n}` (n: the occurrence of
//! `start_child` in the parent) unless the caller gives one.
//! Cancelling the parent cancels its unfinished children (and theirs),
//! unless a child was started [`detached`](ChildOptions::detached).

use std::any::TypeId;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use crate::context::Ctx;
use crate::error::{Error, InstanceError, ReplayError, Result};
use crate::future::BoxFuture;
use crate::ids::validate_id;
use crate::records::{
    At, CHILD_RESULT, CheckpointRecord, CheckpointState, ChildEnd, ChildStarted, ReservedSite,
    START_CHILD,
};
use crate::services::ChildStart;
use crate::workflow::{IntoWorkflow, Workflow};

type In<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Input;
type Out<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Output;

/// The id of a child instance: [`Derived`](ChildId::Derived) from the
/// parent's (`{parent id}/{workflow name}-{n}`, n counting the parent's
/// child starts from 0, so the same on every replay), or given. A `&str`
/// or `String` gives it; `None` or `ChildId::Derived` derives it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChildId {
    /// `{parent id}/{workflow name}-{n}`.
    #[default]
    Derived,
    /// This id. Like any instance id it is an idempotency key: an instance
    /// that exists with this id (same workflow and input) is attached to,
    /// not started again.
    Given(String),
}

impl From<&str> for ChildId {
    fn from(id: &str) -> Self {
        ChildId::Given(id.to_string())
    }
}

impl From<String> for ChildId {
    fn from(id: String) -> Self {
        ChildId::Given(id)
    }
}

impl From<&String> for ChildId {
    fn from(id: &String) -> Self {
        ChildId::Given(id.clone())
    }
}

impl From<Option<String>> for ChildId {
    fn from(id: Option<String>) -> Self {
        id.map_or(ChildId::Derived, ChildId::Given)
    }
}

/// Options of [`Ctx::start_child_with`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ChildOptions {
    detached: bool,
}

impl ChildOptions {
    /// No options: as [`Ctx::start_child`].
    pub fn new() -> Self {
        ChildOptions::default()
    }

    /// The child is not cancelled when its parent is (by default it is).
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }
}

/// A child instance started by [`Ctx::start_child`]: await
/// [`result`](Child::result) for its output. Dropping it leaves the child
/// running.
#[must_use = "a child runs either way; await `result` to use its output"]
pub struct Child<'c, O> {
    ctx: &'c Ctx,
    id: String,
    spec: Spec,
    /// When the child was started (clock milliseconds).
    since_ms: u64,
    _output: PhantomData<fn() -> O>,
}

impl<O> std::fmt::Debug for Child<'_, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("id", &self.id)
            .field("workflow", &self.spec.workflow)
            .finish_non_exhaustive()
    }
}

/// What it takes to start or attach to a child.
#[derive(Clone)]
struct Spec {
    workflow: &'static str,
    version: u32,
    type_id: TypeId,
    erase: Arc<dyn Fn() -> Box<dyn std::any::Any + Send> + Send + Sync>,
    input: Vec<u8>,
    cascade: bool,
}

impl Spec {
    fn of<W: Workflow>(workflow: W, input: Vec<u8>, cascade: bool) -> Spec {
        Spec {
            workflow: W::NAME,
            version: W::VERSION,
            type_id: TypeId::of::<W>(),
            erase: Arc::new(move || Box::new(crate::engine::erase(workflow).1)),
            input,
            cascade,
        }
    }

    fn start(&self, parent: &str, id: &str) -> ChildStart {
        let erase = Arc::clone(&self.erase);
        ChildStart {
            workflow: self.workflow,
            version: self.version,
            type_id: self.type_id,
            erase: Box::new(move || erase()),
            id: id.to_string(),
            input: self.input.clone(),
            parent: parent.to_string(),
            cascade: self.cascade,
        }
    }
}

impl Ctx {
    /// Starts instance `id` of `workflow` with `input` as a child of this
    /// instance, durably, and returns once it is
    /// recorded (it runs to its end across crashes, here or on any worker
    /// that registers its workflow), without waiting for it: await
    /// [`Child::result`] for its output. With `id` `None` (or
    /// [`ChildId::Derived`]) the id is `{this id}/{workflow name}-{n}`.
    ///
    /// It is checkpointed like a step: a replay (after a crash or restart)
    /// does not start it again, and gets the same child back. Cancelling
    /// this instance cancels the child, unless it was started
    /// [`detached`](ChildOptions::detached). Its history names this
    /// instance ([`History::parent`](crate::History::parent)); this
    /// instance's lists it ([`History::children`](crate::History::children)).
    ///
    /// Errors, with nothing started: the input does not encode or is over
    /// `max_value_size`; [`UsageError::NotRegistered`](crate::UsageError::NotRegistered)
    /// when this engine does not register `workflow` and its store is not
    /// shared with workers that may; [`UsageError::IdConflict`](crate::UsageError::IdConflict)
    /// when the id names an instance of another workflow or input;
    /// [`UsageError::InvalidId`](crate::UsageError::InvalidId);
    /// [`InstanceError::Cancelled`] once this instance was cancelled.
    ///
    /// ```
    /// use durable_runtime::{Ctx, IntoWorkflow, Workflow};
    ///
    /// async fn charge_all<W>(ctx: &Ctx, charge: W, orders: Vec<u64>) -> durable_runtime::Result<u64>
    /// where
    ///     W: IntoWorkflow,
    ///     W::Workflow: Workflow<Input = u64, Output = Result<u64, String>>,
    /// {
    ///     let mut total = 0;
    ///     for order in orders {
    ///         let child = ctx.start_child(charge, format!("charge-{order}"), order).await?;
    ///         total += child.result().await?.unwrap_or(0);
    ///     }
    ///     Ok(total)
    /// }
    /// ```
    pub fn start_child<'c, I: IntoWorkflow>(
        &'c self,
        workflow: I,
        id: impl Into<ChildId>,
        input: In<I>,
    ) -> BoxFuture<'c, Result<Child<'c, Out<I>>>> {
        self.start_child_with(workflow, id, input, ChildOptions::new())
    }

    /// [`start_child`](Self::start_child) with options: whether the child
    /// goes when this instance is cancelled.
    pub fn start_child_with<'c, I: IntoWorkflow>(
        &'c self,
        workflow: I,
        id: impl Into<ChildId>,
        input: In<I>,
        options: ChildOptions,
    ) -> BoxFuture<'c, Result<Child<'c, Out<I>>>> {
        type W<I> = <I as IntoWorkflow>::Workflow;
        // Numbered when called, so that joined starts number in call order.
        let occurrence = self.next_occurrence(START_CHILD);
        let seq = self.next_seq();
        let input = self.services.encode_value(&self.id, "child input", &input);
        let workflow = workflow.into_workflow();
        let id = id.into();
        Box::pin(async move {
            let spec = Spec::of(workflow, input?, !options.detached);
            let id = match id {
                ChildId::Given(id) => id,
                ChildId::Derived => format!("{}/{}-{occurrence}", self.id, W::<I>::NAME),
            };
            let id = match self.take_checkpoint(START_CHILD, occurrence) {
                Some(CheckpointRecord {
                    state: CheckpointState::Done { outcome, .. },
                    started_at_ms,
                    ..
                }) => match crate::codec::decode::<ChildStarted>(&outcome) {
                    Ok(started) if started.workflow == W::<I>::NAME => {
                        return Ok(Child {
                            ctx: self,
                            id: started.id,
                            spec: Spec {
                                cascade: started.cascade,
                                ..spec
                            },
                            since_ms: started_at_ms,
                            _output: PhantomData,
                        });
                    }
                    Ok(started) => {
                        let error = Error::Replay(ReplayError::Nondeterminism {
                            instance: self.id.clone(),
                            detail: format!(
                                "{START_CHILD:?} (occurrence {occurrence}) started a child of workflow {:?}, and the code now starts one of {:?}",
                                started.workflow,
                                W::<I>::NAME
                            ),
                        });
                        self.abort(error).await
                    }
                    Err(reason) => {
                        let error = Error::Replay(ReplayError::ValueDecode {
                            instance: self.id.clone(),
                            what: "a child's start",
                            expected_type: "ChildStarted",
                            reason: reason.to_string(),
                        });
                        self.abort(error).await
                    }
                },
                Some(other) => {
                    let error =
                        self.diverged(START_CHILD, occurrence, &other.state, "a child start");
                    self.abort(error).await
                }
                None => id,
            };
            validate_id(&id)?;
            self.before_effect().await?;
            let _busy = self.signals.busy();
            let started_at_ms = self.now_ms();
            let starter = match self.services.starter(&self.id) {
                Ok(starter) => starter,
                Err(e) => self.abort(e).await,
            };
            match starter.start_child(spec.start(&self.id, &id)).await {
                Ok(_) => {}
                Err(e @ Error::Instance(InstanceError::ShutDown { .. })) => self.abort(e).await,
                Err(e @ Error::Store(_)) => self.abort(e).await,
                Err(e) => return Err(e),
            }
            let started = ChildStarted {
                id: id.clone(),
                workflow: W::<I>::NAME.to_string(),
                cascade: spec.cascade,
            };
            self.done_checkpoint(
                ReservedSite {
                    name: START_CHILD,
                    occurrence,
                    key: None,
                    seq,
                    started_at_ms,
                },
                &started,
                true,
                None,
            )
            .await;
            tracing::info!(durable.instance_id = %self.id, durable.child = %id, "child started");
            Ok(Child {
                ctx: self,
                id,
                spec,
                since_ms: started_at_ms,
                _output: PhantomData,
            })
        })
    }

    /// Runs one child of `workflow` per item of `inputs`, at most
    /// `in_flight` at a time (at least one), and returns their results in
    /// the order of `inputs`: each child's output, or the error it ended
    /// with ([`InstanceError::Failed`], [`InstanceError::Cancelled`]).
    /// Each child's id is derived (see [`ChildId::Derived`]). Each start and
    /// each result is checkpointed as with
    /// [`start_child`](Self::start_child) and [`Child::result`]: a replay
    /// starts no child twice and re-reads the results it recorded. A new
    /// child starts as soon as any running one ends.
    ///
    /// The outer error is one that stopped the fan-out (a child could not
    /// be started; this instance was cancelled): children started before it
    /// keep running.
    ///
    /// ```
    /// use durable_runtime::{Ctx, IntoWorkflow, Workflow};
    ///
    /// async fn resize_all<W>(ctx: &Ctx, resize: W, images: Vec<String>) -> durable_runtime::Result<usize>
    /// where
    ///     W: IntoWorkflow,
    ///     W::Workflow: Workflow<Input = String, Output = Result<(), String>>,
    /// {
    ///     // 10,000 images, 16 resized at a time.
    ///     let results = ctx.run_children(resize, images, 16).await?;
    ///     Ok(results.iter().filter(|r| matches!(r, Ok(Ok(())))).count())
    /// }
    /// ```
    pub fn run_children<'c, I, It>(
        &'c self,
        workflow: I,
        inputs: It,
        in_flight: usize,
    ) -> BoxFuture<'c, Result<Vec<Result<Out<I>>>>>
    where
        I: IntoWorkflow,
        It: IntoIterator<Item = In<I>>,
        It::IntoIter: Send + 'c,
    {
        let inputs = inputs.into_iter();
        let limit = in_flight.max(1);
        Box::pin(async move {
            let mut results: Vec<Option<Result<Out<I>>>> = Vec::new();
            let mut running: Vec<(usize, BoxFuture<'c, Result<Out<I>>>)> = Vec::new();
            for (i, input) in inputs.enumerate() {
                if running.len() >= limit {
                    let (at, result) = first_of(&mut running).await;
                    results[at] = Some(result);
                }
                let child = self.start_child(workflow, None, input).await?;
                results.push(None);
                running.push((i, child.result()));
            }
            while !running.is_empty() {
                let (at, result) = first_of(&mut running).await;
                results[at] = Some(result);
            }
            Ok(results.into_iter().flatten().collect())
        })
    }

    /// Before a side effect that is not a step body (a child's start):
    /// waits while the instance is paused; `Cancelled` once it was
    /// cancelled; on a shared store, waits until this process surely
    /// holds the instance.
    async fn before_effect(&self) -> Result<()> {
        self.signals.unpaused().await;
        if self.signals.is_cancelled() {
            return Err(Error::Instance(InstanceError::Cancelled {
                instance: self.id.clone(),
            }));
        }
        if let Some(held) = self.services.backend.hold(&self.id, self.lease)
            && let Err(e) = held.await
        {
            self.abort(e).await
        }
        Ok(())
    }

    /// Writes a finished checkpoint of reserved site `site` whose outcome
    /// is `value`; stops the instance if the write is refused or fails.
    async fn done_checkpoint<T: serde::Serialize>(
        &self,
        site: ReservedSite,
        value: &T,
        ok: bool,
        error_text: Option<String>,
    ) {
        let name = site.name;
        let outcome = match crate::codec::encode(value) {
            Ok(outcome) => outcome,
            Err(reason) => {
                let error = Error::Replay(ReplayError::Encode {
                    instance: self.id.clone(),
                    what: name.to_string(),
                    reason,
                });
                self.abort(error).await
            }
        };
        let record = CheckpointRecord::reserved(site, outcome, ok, error_text, self.now_ms());
        self.take_recoveries();
        if let Err(e) = self.checkpoint(record, true).await {
            self.abort(e).await
        }
    }
}

impl<'c, O: serde::de::DeserializeOwned + Send + 'c> Child<'c, O> {
    /// The child's instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the child to end and returns its output, durably: how it
    /// ended is checkpointed in this instance, so a replay returns the same
    /// without asking the child again. A live parent learns of the end at
    /// once; one that waits long parks (its status is
    /// [`Status::Waiting`](crate::Status::Waiting) for
    /// `durable::child_result:{child id}`, an event the child's end sends),
    /// and restarts while it waits do not count as resumes without
    /// progress. Should that event be lost (a crash right after the child
    /// ended), the parent looks again after a tenth of the child's age so
    /// far (1 s to 5 min).
    ///
    /// Errors: [`InstanceError::Failed`] or [`InstanceError::Cancelled`]
    /// (naming the child) when the child ended so, recorded like an output;
    /// [`InstanceError::NeedsAttention`] when the child was set aside (not
    /// recorded: once an operator resumes the child, waiting again gets its
    /// end); [`InstanceError::Cancelled`] (naming this instance) when this
    /// instance is cancelled while it waits.
    pub fn result(self) -> BoxFuture<'c, Result<O>> {
        Box::pin(async move {
            let Child {
                ctx,
                id,
                spec,
                since_ms,
                ..
            } = self;
            let key = crate::codec::encode(&id).unwrap_or_else(|_| id.as_bytes().to_vec());
            let at = At::Key(key, id.clone());
            let end = match ctx.take_checkpoint_at(CHILD_RESULT, &at) {
                Some(CheckpointRecord {
                    state: CheckpointState::Done { outcome, .. },
                    ..
                }) => match crate::codec::decode::<ChildEnd>(&outcome) {
                    Ok(end) => end,
                    Err(reason) => {
                        let error = Error::Replay(ReplayError::ValueDecode {
                            instance: ctx.id.clone(),
                            what: "a child's end",
                            expected_type: "ChildEnd",
                            reason: reason.to_string(),
                        });
                        ctx.abort(error).await
                    }
                },
                Some(other) => {
                    let error = ctx.diverged(CHILD_RESULT, 0, &other.state, "a child's result");
                    ctx.abort(error).await
                }
                None => {
                    let seq = ctx.next_seq();
                    let started_at_ms = ctx.now_ms();
                    let end = ctx.wait_child(&id, &spec, since_ms).await?;
                    let (ok, text) = match &end {
                        ChildEnd::Returned(_) => (true, None),
                        ChildEnd::Failed(reason) => (false, Some(reason.clone())),
                        ChildEnd::Cancelled => (false, Some("cancelled".to_string())),
                    };
                    ctx.done_checkpoint(
                        ReservedSite {
                            name: CHILD_RESULT,
                            occurrence: 0,
                            key: at.key(),
                            seq,
                            started_at_ms,
                        },
                        &end,
                        ok,
                        text,
                    )
                    .await;
                    end
                }
            };
            match end {
                ChildEnd::Returned(bytes) => {
                    crate::journal::decode_value(&bytes).map_err(|reason| {
                        Error::Replay(ReplayError::ValueDecode {
                            instance: id.clone(),
                            what: "output",
                            expected_type: std::any::type_name::<O>(),
                            reason,
                        })
                    })
                }
                ChildEnd::Failed(reason) => Err(Error::Instance(InstanceError::Failed {
                    instance: id,
                    reason,
                })),
                ChildEnd::Cancelled => {
                    Err(Error::Instance(InstanceError::Cancelled { instance: id }))
                }
            }
        })
    }
}

impl Ctx {
    /// Attaches to child `id` (started at `since_ms`) and waits for its
    /// end. To the scheduler it is a wait for event
    /// `durable::child_result:{id}`, which the child's end sends: a run
    /// that waits long enough parks and is woken by it, or looks again
    /// after a tenth of the child's age so far (1 s to 5 min) should the
    /// event be lost; a live run learns of the end at once.
    async fn wait_child(&self, id: &str, spec: &Spec, since_ms: u64) -> Result<ChildEnd> {
        let starter = match self.services.starter(&self.id) {
            Ok(starter) => starter,
            Err(e) => self.abort(e).await,
        };
        let mut ended = {
            let _busy = self.signals.busy();
            match starter.start_child(spec.start(&self.id, id)).await {
                Ok(ended) => ended,
                Err(e @ Error::Instance(InstanceError::ShutDown { .. })) => self.abort(e).await,
                Err(e @ Error::Store(_)) => self.abort(e).await,
                Err(e) => return Err(e),
            }
        };
        let mut bell = self.signals.bell.subscribe();
        let outcome = loop {
            if let Some(outcome) = ended.borrow_and_update().clone() {
                break outcome;
            }
            if self.signals.is_cancelled() {
                return Err(Error::Instance(InstanceError::Cancelled {
                    instance: self.id.clone(),
                }));
            }
            let now = self.now_ms();
            let due = now.saturating_add(
                (now.saturating_sub(since_ms) / 10).clamp(RECHECK_MIN_MS, RECHECK_MAX_MS),
            );
            let _wait = self.signals.wait(crate::records::WaitCond {
                name: format!("{CHILD_RESULT}:{id}"),
                occurrence: 0,
                deadline_ms: Some(due),
                // The child's end sends this event (`tell_parent`), which
                // wakes a parked parent; the deadline, should it be lost.
                event_type: Some("the child's end".to_string()),
            });
            tokio::select! {
                changed = ended.changed() => {
                    if changed.is_err() {
                        // The engine let go of the child (shutdown).
                        let error = Error::Instance(InstanceError::ShutDown { instance: self.id.clone() });
                        self.abort(error).await
                    }
                }
                _ = bell.changed() => {}
                // Looks again: the child may have ended where no hint
                // reaches this process.
                () = self.services.clock.sleep_until(due) => {
                    if let Ok(again) = starter.start_child(spec.start(&self.id, id)).await {
                        ended = again;
                    }
                }
            }
        };
        match outcome {
            Ok(bytes) => Ok(ChildEnd::Returned(bytes)),
            Err(Error::Instance(InstanceError::Failed { reason, .. })) => {
                Ok(ChildEnd::Failed(reason))
            }
            Err(Error::Instance(
                InstanceError::Cancelled { .. } | InstanceError::DeadlinePassed { .. },
            )) => Ok(ChildEnd::Cancelled),
            Err(e @ Error::Instance(InstanceError::ShutDown { .. })) => self.abort(e).await,
            Err(e @ Error::Store(_)) => self.abort(e).await,
            // Any other end that is final (a step panicked or timed out
            // for good, ..): what its record says, `Failed` with this text.
            Err(e) if !e.blocks() => Ok(ChildEnd::Failed(e.to_string())),
            Err(e) => Err(e),
        }
    }
}

/// The shortest and longest time between two looks at a child's end by a
/// parent that waits for it (see `Ctx::wait_child`).
const RECHECK_MIN_MS: u64 = 1_000;
const RECHECK_MAX_MS: u64 = 300_000;

/// Waits for the first of `running` to finish; removes it and returns its
/// index (in the caller's numbering) and result.
async fn first_of<'c, T>(running: &mut Vec<(usize, BoxFuture<'c, T>)>) -> (usize, T) {
    let (slot, result) = std::future::poll_fn(|cx| {
        for (slot, (_, fut)) in running.iter_mut().enumerate() {
            if let Poll::Ready(result) = Pin::as_mut(fut).poll(cx) {
                return Poll::Ready((slot, result));
            }
        }
        Poll::Pending
    })
    .await;
    let (at, _) = running.swap_remove(slot);
    (at, result)
}
