//! [`Engine`]: the public face of the runtime. Each method checks its
//! arguments and hands off to the module that owns the concern:
//!
//! | module | concern |
//! | --- | --- |
//! | `builder` | [`EngineBuilder`], configuration, open |
//! | `start` | [`StartOptions`], the workflow a start records and its deadline |
//! | `registry` | workflows by name, types erased |
//! | `instances` | live instances, start and attach |
//! | `handle` | [`Handle`], the outcome a stored record implies |
//! | `driver` | one run of one instance, the crash-loop guard |
//! | `ending` | how a run ended, recorded; an instance's transitions |
//! | `scheduler` | the claim loop: claims due and runnable work from the backend, wake-up hints |
//! | `events` | `send_event` and `cancel`, decided by the backend |
//! | `published` | `get_event`, `read_stream` (each with a wait), `send_event_with_key` |
//! | `recovery` | the first claim round at open, and its report |
//! | `queries` | status, history, listing |
//! | `many` | `start_many`: many instances recorded in one durable write |
//! | `queues` | queues with flow control: enqueue, the dispatch loop, queue stats |
//! | `queues_ctx` | `Ctx::enqueue`: enqueueing from a workflow, checkpointed |
//! | `saga` | compensation when an instance fails or is cancelled |
//! | `children` | child workflows: starting one for a parent, cancelling a parent's children |
//! | `control` | the operator's public actions: retry, cancel, fork, pause, unpause, purge |
//! | `operator` | what those actions do: reopening, forking, pausing, retention |
//! | `schedules` | cron schedules: add, pause, resume, remove, list; firing their ticks |
//! | `flow` | the flow loop: fires due schedule ticks and debounces, sleeps until the next |
//! | `debounce` | `debounce`: a pending start per key, fired once its calls stop |
//! | `evolution` | the compatibility check of stored history against this code |
//! | `admin` | (feature `json`) documents for operators (`admin/history`: an instance's story), events as JSON, resume by id, the gate against other manifests (`admin/actions`) |

#[cfg(feature = "json")]
pub(crate) mod admin;
mod builder;
mod children;
mod control;
mod debounce;
mod driver;
mod ending;
mod events;
mod evolution;
mod flow;
mod handle;
mod instances;
mod many;
mod operator;
mod published;
mod queries;
mod queues;
mod queues_ctx;
mod recovery;
mod registry;
mod saga;
mod scheduler;
mod schedules;
mod start;

use std::sync::Arc;

use crate::error::Result;
use crate::ids::validate_id;
use crate::inspect::{History, Status};
use crate::listing::{ListFilter, Page};
use crate::services::Services;
use crate::workflow::{IntoWorkflow, Workflow};

pub use self::builder::{DEFAULT_MAX_RECOVERIES, DEFAULT_MAX_VALUE_SIZE, EngineBuilder};
pub use self::evolution::Incompatibility;
pub use self::handle::Handle;
pub use self::recovery::RecoveryReport;
pub(crate) use self::registry::entry as erase;
pub use self::start::StartOptions;

use self::builder::Config;
use self::instances::{Birth, Instances, Run};
use self::registry::Registry;
use self::scheduler::Scheduler;

/// The input type of the workflow `I` names.
type In<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Input;
/// The output type of the workflow `I` names.
type Out<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Output;

/// The engine's shared state, one field per concern.
pub(crate) struct Core {
    /// What instances may use: backend, clock.
    services: Arc<Services>,
    config: Config,
    registry: Registry,
    instances: Instances,
    scheduler: Scheduler,
    /// Declared queues and what this process dispatched.
    queues: queues::Queues,
    /// One permit: instances resumed again without progress run one at a
    /// time until they finish a step (see `driver.rs`).
    suspects: Arc<tokio::sync::Semaphore>,
    runtime: tokio::runtime::Handle,
}

/// Runs workflows durably. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Engine {
    core: Arc<Core>,
    recovery: Arc<RecoveryReport>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Starts instance `id` of `workflow` with `input` and returns once the
    /// instance is durably recorded (it will run to the end even across
    /// crashes), without waiting for it to finish.
    ///
    /// The id is an idempotency key: if instance `id` exists (running or
    /// finished) with the same workflow and input, this attaches to it;
    /// with another workflow or input it is [`UsageError::IdConflict`](crate::UsageError::IdConflict).
    ///
    /// The workflow must be registered with this engine
    /// ([`UsageError::NotRegistered`](crate::UsageError::NotRegistered)),
    /// except on a store other processes share (PostgreSQL): there an
    /// engine that does not register it is a client, which records the
    /// instance for the workers that do and runs nothing; the handle
    /// completes when a worker finishes it.
    pub async fn start<I: IntoWorkflow>(
        &self,
        workflow: I,
        id: impl Into<String>,
        input: In<I>,
    ) -> Result<Handle<Out<I>>> {
        self.start_with(workflow, id, input, StartOptions::new())
            .await
    }

    /// [`start`](Self::start) with options: a whole-workflow deadline.
    /// The options are recorded with the instance when it is created (a
    /// start that attaches to an existing instance does not change them).
    ///
    /// ```
    /// # use durable_runtime::{Engine, IntoWorkflow, Workflow};
    /// # async fn demo<W: IntoWorkflow>(engine: Engine, checkout: W, input: <W::Workflow as Workflow>::Input)
    /// # -> durable_runtime::Result<()> {
    /// use std::time::Duration;
    /// use durable_runtime::StartOptions;
    ///
    /// // Cancelled (status Cancelled, TransitionKind::DeadlinePassed in its
    /// // history) unless it finished within a day, parked or not.
    /// let options = StartOptions::new().deadline(Duration::from_secs(86_400));
    /// let handle = engine.start_with(checkout, "order-42", input, options).await?;
    /// # drop(handle);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_with<I: IntoWorkflow>(
        &self,
        workflow: I,
        id: impl Into<String>,
        input: In<I>,
        options: StartOptions,
    ) -> Result<Handle<Out<I>>> {
        type W<I> = <I as IntoWorkflow>::Workflow;
        let id = id.into();
        validate_id(&id)?;
        let (erased, run_here) = self.to_start(workflow).await?;
        let input = self.core.services.encode_value(&id, "input", &input)?;
        let deadline = self.deadline_of::<W<I>>(options.deadline);
        let done = Arc::clone(&self.core)
            .start_or_attach(
                W::<I>::NAME,
                erased,
                id.clone(),
                input,
                Run {
                    manual: false,
                    here: run_here,
                },
                Birth::deadline(deadline),
            )
            .await?;
        Ok(Handle::new(id, done, &self.core))
    }

    /// Starts (or attaches to) instance `id` and waits for its output; see
    /// [`start`](Self::start).
    pub async fn run<I: IntoWorkflow>(
        &self,
        workflow: I,
        id: impl Into<String>,
        input: In<I>,
    ) -> Result<Out<I>> {
        self.start(workflow, id, input).await?.result().await
    }

    /// Attaches to instance `id` of `workflow`, whatever its input.
    /// [`UsageError::NotFound`](crate::UsageError::NotFound) if there is no such
    /// instance. An unfinished instance that is not running (blocked) is
    /// resumed.
    pub async fn attach<I: IntoWorkflow>(
        &self,
        workflow: I,
        id: impl Into<String>,
    ) -> Result<Handle<Out<I>>> {
        self.attach_or_resume(workflow, id.into(), false).await
    }

    /// Resumes instance `id` by hand: one that was set aside as
    /// [`Status::NeedsAttention`], a blocked one once its cause is fixed, an
    /// [`Status::Incompatible`] one (checked again first), or a
    /// [`Status::Cancelled`] one (durably reopened first, recorded in its
    /// history as [`TransitionKind::Reopened`](crate::TransitionKind::Reopened)
    /// with who did it; it runs on from its checkpoints, and a step that was
    /// running when it was cancelled runs again). Its count of resumes
    /// without progress starts again. A running or completed instance is
    /// attached to, as with [`attach`](Self::attach). Resuming twice is
    /// resuming once.
    /// A [`Status::Failed`] instance is not resumed: a step failed for good
    /// and that failure is its recorded outcome, so this returns
    /// [`InstanceError::Failed`](crate::InstanceError::Failed) (never `Ok` doing nothing);
    /// start a new instance.
    pub async fn resume<I: IntoWorkflow>(
        &self,
        workflow: I,
        id: impl Into<String>,
    ) -> Result<Handle<Out<I>>> {
        self.attach_or_resume(workflow, id.into(), true).await
    }

    async fn attach_or_resume<I: IntoWorkflow>(
        &self,
        workflow: I,
        id: String,
        manual: bool,
    ) -> Result<Handle<Out<I>>> {
        let _ = workflow;
        type W<I> = <I as IntoWorkflow>::Workflow;
        validate_id(&id)?;
        let erased = self.core.registry.get::<W<I>>()?;
        let record = self.core.services.backend.load(&id).await?.ok_or_else(|| {
            crate::Error::Usage(crate::error::UsageError::NotFound { id: id.clone() })
        })?;
        if manual && let crate::records::InstanceState::Failed { error } = &record.state {
            // A failed instance's failure is its recorded outcome (a step
            // failed for good): resuming it would change that, so it is an
            // error rather than a silent no-op.
            return Err(crate::Error::Instance(
                crate::error::InstanceError::Failed {
                    instance: id,
                    reason: format!(
                        "{error}; a failed instance cannot be resumed, start a new one"
                    ),
                },
            ));
        }
        if manual && record.state == crate::records::InstanceState::Cancelled {
            self.core.reopen_cancelled(&id).await?;
        }
        let done = Arc::clone(&self.core)
            .start_or_attach(
                W::<I>::NAME,
                erased,
                id.clone(),
                record.input,
                Run { manual, here: true },
                Birth::default(),
            )
            .await?;
        Ok(Handle::new(id, done, &self.core))
    }

    /// The status of instance `id`: with the step attempts running now, and
    /// what it waits for if it is parked.
    pub async fn status(&self, id: &str) -> Result<Status> {
        validate_id(id)?;
        self.core.status(id).await
    }

    /// The audit trail of instance `id`: its transitions and every step
    /// occurrence with attempts, times and outcome (including attempts
    /// running now).
    pub async fn history(&self, id: &str) -> Result<History> {
        validate_id(id)?;
        self.core.history(id).await
    }

    /// One page of instances that pass `filter`, newest first (by creation
    /// time). Pages are read from an index, never by loading every instance.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// use durable_runtime::{ListFilter, StatusKind};
    ///
    /// let mut filter = ListFilter::new().status(StatusKind::Blocked).limit(50);
    /// loop {
    ///     let page = engine.list(&filter).await?;
    ///     for instance in &page.instances {
    ///         println!("{} {} {:?}", instance.id, instance.workflow, instance.status);
    ///     }
    ///     match page.next {
    ///         Some(next) => filter = filter.after(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list(&self, filter: &ListFilter) -> Result<Page> {
        self.core.list(filter).await
    }

    /// Sends event `name` with `payload` to instance `id`, durably: when this
    /// returns, the event is on disk and will be delivered, even across a
    /// restart. Events of one name are consumed in the order sent, one per
    /// `wait_for!` occurrence; an event sent before the workflow reaches its
    /// wait is kept until then, and one sent after every wait of that name
    /// was satisfied is kept but never delivered again.
    ///
    /// Errors: [`UsageError::NotFound`](crate::UsageError::NotFound),
    /// [`UsageError::InstanceFinished`](crate::UsageError::InstanceFinished),
    /// [`UsageError::WaitTimedOut`](crate::UsageError::WaitTimedOut) when the
    /// last wait of that name timed out and the instance does not wait for
    /// the name again now (nothing is stored: the event would never be
    /// read; a workflow that waits again in a loop takes it once it waits),
    /// and
    /// [`UsageError::EventTypeMismatch`](crate::UsageError::EventTypeMismatch) when the
    /// payload's serde shape is not the one the workflow's `wait_for!` of
    /// that name reads, whether or not the instance waits yet (checked
    /// against the manifest of the code the instance runs on; decided
    /// atomically with delivery: nothing is stored then). So nothing this
    /// accepts can block the instance later.
    pub async fn send_event<P: serde::Serialize + serde::de::DeserializeOwned + 'static>(
        &self,
        id: impl Into<String>,
        name: impl Into<String>,
        payload: P,
    ) -> Result<()> {
        let (id, name) = (id.into(), name.into());
        validate_id(&id)?;
        let payload = self
            .core
            .services
            .encode_value(&id, &format!("event {name:?}"), &payload)?;
        self.core
            .send_event(
                id,
                name,
                (std::any::type_name::<P>(), crate::manifest::shape_of::<P>()),
                payload,
            )
            .await
    }

    /// What recovery did when this engine opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Stops every instance running in this process where it stands (each
    /// resumes at the next open; their handles return
    /// [`InstanceError::ShutDown`](crate::InstanceError::ShutDown)), waits until they have
    /// stopped and every write is on disk, and closes the store, so it can
    /// be opened again at once. Other clones of this engine can still read
    /// status and history but can no longer write.
    pub async fn shutdown(self) {
        self.core.scheduler.stop().await;
        self.core
            .instances
            .stop_all(&self.core.services.backend)
            .await;
        self.core.services.backend.close().await;
    }

    /// Whether nothing can happen until the clock moves or an event is sent
    /// (feature `testing`; see [`TestEngine`](crate::testing::TestEngine)).
    #[cfg(feature = "testing")]
    pub(crate) async fn is_idle(&self) -> bool {
        self.core.idle().await
    }

    /// The engine's backend (feature `testing`: the kit's export).
    #[cfg(feature = "testing")]
    pub(crate) fn backend(&self) -> &std::sync::Arc<dyn crate::backend::Backend> {
        &self.core.services.backend
    }

    /// The earliest deadline (clock milliseconds) anything in this engine
    /// waits for: a timer, a backoff, a wait's timeout (feature `testing`).
    #[cfg(feature = "testing")]
    pub(crate) fn next_wake_ms(&self) -> Option<u64> {
        self.core.next_wake()
    }

    /// How many instances are parked in this process now (feature `hooks`).
    #[cfg(feature = "hooks")]
    pub fn parked_count(&self) -> usize {
        self.core.services.backend.parked_count()
    }

    /// Batches and group commits written so far (feature `hooks`).
    #[cfg(feature = "hooks")]
    pub fn commit_stats(&self) -> (u64, u64) {
        self.core.services.backend.commit_stats()
    }
}
