//! [`Engine`] and its builder: open the store, register workflows, start,
//! attach to and resume instances.

use std::any::TypeId;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::codec;
use crate::committer::Committer;
use crate::context::Ctx;
use crate::error::{Error, Result, StoreError};
use crate::history::{self, History, Status};
use crate::records::{
    CheckpointRecord, InstanceRecord, InstanceState, TransitionKind, TransitionRecord,
    instance_key, instance_prefix, now_ms, recoveries_of, recoveries_value,
};
use crate::retry::RetryPolicy;
use crate::step::{CatchUnwind, panic_message};
use crate::store::{Batch, SledStore, Store, Tree};
use crate::workflow::{BoxFuture, IntoWorkflow, Workflow};

/// The longest instance id accepted, in bytes.
pub const MAX_ID_LEN: usize = 1024;

/// The default limit of one encoded step outcome, input or output: 1 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1 << 20;

/// Transitions kept per instance; older `Resumed` entries are dropped first.
const MAX_TRANSITIONS: usize = 64;

/// The input type of the workflow `I` names.
type In<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Input;
/// The output type of the workflow `I` names.
type Out<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Output;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub retry: RetryPolicy,
    pub max_value_size: usize,
    pub max_recoveries: u32,
}

/// The default of [`EngineBuilder::max_recoveries`].
pub const DEFAULT_MAX_RECOVERIES: u32 = 10;

/// How an instance task begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begin {
    /// Just created: nothing to resume.
    Fresh,
    /// Resumed by recovery or by a start that found it unfinished; counts
    /// towards [`Config::max_recoveries`].
    Resume,
    /// Resumed by hand with [`Engine::resume`]: the count starts again.
    ResumeByHand,
}

/// A registered workflow with its types erased, so the engine can resume
/// instances it only knows by name.
trait Erased: Send + Sync {
    fn type_id(&self) -> TypeId;
    fn policy(&self) -> Option<RetryPolicy>;
    fn run<'a>(&self, ctx: &'a Ctx, input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>>>;
}

struct Registered<W>(W);

impl<W: Workflow> Erased for Registered<W> {
    fn type_id(&self) -> TypeId {
        TypeId::of::<W>()
    }

    fn policy(&self) -> Option<RetryPolicy> {
        self.0.retry_policy()
    }

    fn run<'a>(&self, ctx: &'a Ctx, input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>>> {
        let workflow = self.0;
        Box::pin(async move {
            let input: W::Input = codec::decode(input).map_err(|e| Error::ValueDecode {
                instance: ctx.id.clone(),
                what: "input",
                expected_type: std::any::type_name::<W::Input>().to_string(),
                reason: e.to_string(),
            })?;
            let output = workflow.run(ctx, input).await;
            encode_value(&ctx.core.config, &ctx.id, "output", &output)
        })
    }
}

fn encode_value<T: serde::Serialize>(
    config: &Config,
    id: &str,
    what: &str,
    value: &T,
) -> Result<Vec<u8>> {
    let bytes = codec::encode(value).map_err(|reason| Error::Encode {
        instance: id.to_string(),
        what: what.to_string(),
        reason,
    })?;
    if bytes.len() > config.max_value_size {
        return Err(Error::ValueTooLarge {
            instance: id.to_string(),
            what: what.to_string(),
            size: bytes.len(),
            limit: config.max_value_size,
        });
    }
    Ok(bytes)
}

type Outcome = Option<Result<Vec<u8>>>;

/// An instance that is running in this process: starters of the same id
/// attach to it.
struct Slot {
    workflow: &'static str,
    input: Vec<u8>,
    done: watch::Sender<Outcome>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// What recovery at [`EngineBuilder::open`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Unfinished instances that were resumed.
    pub resumed: usize,
    /// Unfinished instances left untouched, with the reason (their workflow
    /// is not registered, or their record does not decode).
    pub skipped: Vec<(String, String)>,
}

/// The engine's shared state.
pub(crate) struct Core {
    store: Arc<dyn Store>,
    pub(crate) committer: Committer,
    pub(crate) config: Config,
    registry: HashMap<&'static str, Arc<dyn Erased>>,
    running: Mutex<HashMap<String, Arc<Slot>>>,
    /// Every instance task holds a clone; shutdown waits for all to drop.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    alive_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
    runtime: tokio::runtime::Handle,
}

/// Builds an [`Engine`]: where the store is, which workflows it runs, defaults.
#[must_use]
pub struct EngineBuilder {
    path: PathBuf,
    store: Option<Arc<dyn Store>>,
    workflows: Vec<(&'static str, Arc<dyn Erased>)>,
    config: Config,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("path", &self.path)
            .field(
                "workflows",
                &self.workflows.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// The embedded store's directory (default `durable.db`); created if missing.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = path.into();
        self
    }

    /// Uses `store` instead of the embedded sled store at [`path`](Self::path).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Registers a workflow so the engine can start it and resume its instances.
    pub fn register<I: IntoWorkflow>(mut self, workflow: I) -> Self {
        let workflow = workflow.into_workflow();
        self.workflows.push((
            <I::Workflow as Workflow>::NAME,
            Arc::new(Registered(workflow)),
        ));
        self
    }

    /// The retry policy of steps whose workflow and step set none.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// The largest encoded step outcome, input or output accepted, in bytes
    /// (default 1 MiB, at most 64 MiB).
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.config.max_value_size = bytes.min(codec::DECODE_LIMIT / 2);
        self
    }

    /// How many times in a row an instance may be resumed (after a crash or a
    /// block) without finishing a step before it is set aside as
    /// [`Status::NeedsAttention`] instead of being resumed again: a step that
    /// kills the process every time it runs must not take the service down
    /// forever. Default 10. The count is stored before each resume.
    pub fn max_recoveries(mut self, resumes: u32) -> Self {
        self.config.max_recoveries = resumes;
        self
    }

    /// Opens (or creates) the store and resumes, in the background, every
    /// unfinished instance of a registered workflow.
    ///
    /// Errors: [`StoreError::Locked`], [`StoreError::Corrupt`],
    /// [`StoreError::FormatTooNew`] (inside [`Error::Store`]),
    /// [`Error::DuplicateWorkflow`], [`Error::NoRuntime`].
    pub async fn open(self) -> Result<Engine> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let mut registry: HashMap<&'static str, Arc<dyn Erased>> = HashMap::new();
        for (name, erased) in self.workflows {
            if let Some(existing) = registry.get(name)
                && existing.type_id() != erased.type_id()
            {
                return Err(Error::DuplicateWorkflow {
                    workflow: name.to_string(),
                });
            }
            registry.insert(name, erased);
        }
        let store: Arc<dyn Store> = match self.store {
            Some(store) => store,
            None => {
                let path = self.path;
                let opened = tokio::task::spawn_blocking(move || SledStore::open(path))
                    .await
                    .map_err(|e| StoreError::Io {
                        op: "open",
                        reason: e.to_string(),
                    })?;
                Arc::new(opened?)
            }
        };
        let committer = Committer::start(Arc::clone(&store)).map_err(|e| StoreError::Io {
            op: "start the committer thread",
            reason: e.to_string(),
        })?;
        let (alive, alive_rx) = mpsc::channel(1);
        let core = Arc::new(Core {
            store,
            committer,
            config: self.config,
            registry,
            running: Mutex::new(HashMap::new()),
            alive: Mutex::new(Some(alive)),
            alive_rx: tokio::sync::Mutex::new(alive_rx),
            runtime,
        });
        let recovery = Arc::clone(&core).recover().await?;
        Ok(Engine {
            core,
            recovery: Arc::new(recovery),
        })
    }
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

/// A started instance: await [`result`](Handle::result) for its output.
#[must_use = "a handle does nothing unless its result is awaited; the instance runs either way"]
pub struct Handle<O> {
    id: String,
    done: watch::Receiver<Outcome>,
    _output: PhantomData<fn() -> O>,
}

impl<O> std::fmt::Debug for Handle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<O: serde::de::DeserializeOwned> Handle<O> {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the instance to finish and returns the workflow's output.
    pub async fn result(mut self) -> Result<O> {
        let outcome = match self.done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(Ok(bytes)) => codec::decode(&bytes).map_err(|e| Error::ValueDecode {
                instance: self.id.clone(),
                what: "output",
                expected_type: std::any::type_name::<O>().to_string(),
                reason: e.to_string(),
            }),
            Some(Err(e)) => Err(e),
            None => Err(Error::ShutDown { instance: self.id }),
        }
    }
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            path: PathBuf::from("durable.db"),
            store: None,
            workflows: Vec::new(),
            config: Config {
                retry: RetryPolicy::default(),
                max_value_size: DEFAULT_MAX_VALUE_SIZE,
                max_recoveries: DEFAULT_MAX_RECOVERIES,
            },
        }
    }

    /// Starts instance `id` of `workflow` with `input` and returns once the
    /// instance is durably recorded (it will run to the end even across
    /// crashes), without waiting for it to finish.
    ///
    /// The id is an idempotency key: if instance `id` exists (running or
    /// finished) with the same workflow and input, this attaches to it;
    /// with another workflow or input it is [`Error::IdConflict`].
    pub async fn start<I: IntoWorkflow>(
        &self,
        workflow: I,
        id: impl Into<String>,
        input: In<I>,
    ) -> Result<Handle<Out<I>>> {
        let _ = workflow;
        type W<I> = <I as IntoWorkflow>::Workflow;
        let id = id.into();
        validate_id(&id)?;
        let erased = self.core.registered::<W<I>>()?;
        let input = encode_value(&self.core.config, &id, "input", &input)?;
        let done = Arc::clone(&self.core)
            .start_or_attach(W::<I>::NAME, erased, id.clone(), input, false)
            .await?;
        Ok(Handle {
            id,
            done,
            _output: PhantomData,
        })
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
    /// [`Error::NotFound`] if there is no such instance. An unfinished
    /// instance that is not running (blocked) is resumed.
    pub async fn attach<I: IntoWorkflow>(
        &self,
        workflow: I,
        id: impl Into<String>,
    ) -> Result<Handle<Out<I>>> {
        self.attach_or_resume(workflow, id.into(), false).await
    }

    /// Resumes instance `id` by hand: one that was set aside as
    /// [`Status::NeedsAttention`], or a blocked one, once its cause is fixed.
    /// Its count of resumes without progress starts again. A running or
    /// finished instance is attached to, as with [`attach`](Self::attach).
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
        let erased = self.core.registered::<W<I>>()?;
        let record = self
            .core
            .load(&id)?
            .ok_or_else(|| Error::NotFound { id: id.clone() })?;
        let done = Arc::clone(&self.core)
            .start_or_attach(W::<I>::NAME, erased, id.clone(), record.input, manual)
            .await?;
        Ok(Handle {
            id,
            done,
            _output: PhantomData,
        })
    }

    /// The status of instance `id`.
    pub fn status(&self, id: &str) -> Result<Status> {
        let record = self
            .core
            .load(id)?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
        Ok(history::status_of(&record.state))
    }

    /// The audit trail of instance `id`: its transitions and every step
    /// occurrence with attempts, times and outcome.
    pub fn history(&self, id: &str) -> Result<History> {
        let record = self
            .core
            .load(id)?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
        let checkpoints = self.core.load_checkpoints(id)?;
        Ok(history::history_of(id, &record, checkpoints))
    }

    /// What recovery did when this engine opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Stops every instance running in this process where it stands (each
    /// resumes at the next open; their handles return [`Error::ShutDown`]),
    /// waits until they have stopped and every write is on disk, and closes
    /// the store, so it can be opened again at once. Other clones of this
    /// engine can still read status and history but can no longer write.
    pub async fn shutdown(self) {
        let slots: Vec<Arc<Slot>> = {
            let mut running = self.core.running.lock().unwrap_or_else(|e| e.into_inner());
            running.drain().map(|(_, slot)| slot).collect()
        };
        for slot in &slots {
            if let Some(task) = slot.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
        drop(slots);
        self.core
            .alive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        {
            let mut alive_rx = self.core.alive_rx.lock().await;
            while alive_rx.recv().await.is_some() {}
        }
        self.core.committer.close().await;
    }

    /// Batches and group commits written so far, for benchmarks.
    #[doc(hidden)]
    pub fn commit_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        let stats = &self.core.committer.stats;
        (
            stats.batches.load(Ordering::Relaxed),
            stats.groups.load(Ordering::Relaxed),
        )
    }
}

fn validate_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is longer than 1024 bytes"
    } else {
        return Ok(());
    };
    let shown: String = id.chars().take(64).collect();
    Err(Error::InvalidId { id: shown, reason })
}

impl Core {
    fn registered<W: Workflow>(&self) -> Result<Arc<dyn Erased>> {
        match self.registry.get(W::NAME) {
            Some(erased) if erased.type_id() == TypeId::of::<W>() => Ok(Arc::clone(erased)),
            _ => Err(Error::NotRegistered {
                workflow: W::NAME.to_string(),
            }),
        }
    }

    fn load(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let Some(bytes) = self.store.get(Tree::Instances, &instance_key(id))? else {
            return Ok(None);
        };
        codec::decode(&bytes).map(Some).map_err(|e| {
            Error::Store(StoreError::Decode {
                what: format!("instance {id:?}"),
                reason: e.to_string(),
            })
        })
    }

    fn load_checkpoints(&self, id: &str) -> Result<Vec<CheckpointRecord>> {
        self.store
            .scan_prefix(Tree::Checkpoints, &instance_prefix(id))?
            .into_iter()
            .map(|(_, bytes)| {
                codec::decode(&bytes).map_err(|e| {
                    Error::Store(StoreError::Decode {
                        what: format!("a checkpoint of instance {id:?}"),
                        reason: e.to_string(),
                    })
                })
            })
            .collect()
    }

    /// Starts `id` or attaches to it; returns the receiver of its outcome.
    async fn start_or_attach(
        self: Arc<Self>,
        workflow: &'static str,
        erased: Arc<dyn Erased>,
        id: String,
        input: Vec<u8>,
        manual: bool,
    ) -> Result<watch::Receiver<Outcome>> {
        let (slot, fresh) = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = running.get(&id) {
                check_conflict(&id, workflow, &input, slot.workflow, &slot.input)?;
                return Ok(slot.done.subscribe());
            }
            let record = match self.load(&id)? {
                Some(record) => {
                    check_conflict(&id, workflow, &input, &record.workflow, &record.input)?;
                    match &record.state {
                        InstanceState::Completed { output } => {
                            return Ok(finished(Ok(output.clone())));
                        }
                        InstanceState::Failed { error } => {
                            return Ok(finished(Err(Error::Failed {
                                instance: id,
                                reason: error.clone(),
                            })));
                        }
                        InstanceState::Cancelled => {
                            return Ok(finished(Err(Error::Cancelled { instance: id })));
                        }
                        InstanceState::NeedsAttention { error } if !manual => {
                            return Ok(finished(Err(Error::NeedsAttention {
                                instance: id,
                                reason: error.clone(),
                            })));
                        }
                        InstanceState::Running
                        | InstanceState::Blocked { .. }
                        | InstanceState::NeedsAttention { .. } => Some(record),
                    }
                }
                None => None,
            };
            let slot = Arc::new(Slot {
                workflow,
                input: input.clone(),
                done: watch::Sender::new(None),
                task: Mutex::new(None),
            });
            running.insert(id.clone(), Arc::clone(&slot));
            match record {
                Some(record) => (slot, Err(record)),
                None => (slot, Ok(())),
            }
        };
        let done = slot.done.subscribe();
        let (record, begin) = match fresh {
            Err(record) if manual => (record, Begin::ResumeByHand),
            Err(record) => (record, Begin::Resume),
            Ok(()) => {
                let now = now_ms();
                let record = InstanceRecord {
                    workflow: workflow.to_string(),
                    input,
                    state: InstanceState::Running,
                    created_at_ms: now,
                    transitions: vec![TransitionRecord {
                        at_ms: now,
                        kind: TransitionKind::Started,
                    }],
                };
                crate::crash::point("start.before_record");
                if let Err(e) = self.commit_record(&id, &record, Some(0)).await {
                    self.finish_slot(&id, &slot, Err(e.clone()));
                    return Err(e);
                }
                crate::crash::point("start.after_record");
                (record, Begin::Fresh)
            }
        };
        self.spawn(id, erased, record, begin, slot);
        Ok(done)
    }

    fn spawn(
        self: Arc<Self>,
        id: String,
        erased: Arc<dyn Erased>,
        record: InstanceRecord,
        begin: Begin,
        slot: Arc<Slot>,
    ) {
        let Some(alive) = self.alive.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            self.finish_slot(
                &id,
                &slot,
                Err(Error::ShutDown {
                    instance: id.clone(),
                }),
            );
            return;
        };
        let runtime = self.runtime.clone();
        let task_slot = Arc::clone(&slot);
        let task = runtime.spawn(async move {
            let guard = TaskGuard {
                core: self,
                _alive: alive,
            };
            let outcome = guard.core.drive(&id, erased, record, begin).await;
            guard.core.finish_slot(&id, &task_slot, outcome);
        });
        *slot.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    }

    fn finish_slot(&self, id: &str, slot: &Arc<Slot>, outcome: Result<Vec<u8>>) {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                running.remove(id);
            }
        }
        slot.done.send_replace(Some(outcome));
    }

    /// Runs one instance to its end (or until it is blocked) and records the end.
    async fn drive(
        self: &Arc<Self>,
        id: &str,
        erased: Arc<dyn Erased>,
        mut record: InstanceRecord,
        begin: Begin,
    ) -> Result<Vec<u8>> {
        let recoveries = match begin {
            Begin::Fresh => 0,
            Begin::ResumeByHand => 1,
            Begin::Resume => {
                let stored = self.store.get(Tree::Active, &instance_key(id))?;
                stored.as_deref().map_or(0, recoveries_of).saturating_add(1)
            }
        };
        if recoveries > self.config.max_recoveries {
            let error = Error::NeedsAttention {
                instance: id.to_string(),
                reason: format!(
                    "it was resumed {} times in a row without finishing a step (the process may be crashing in it); fix the cause, then call Engine::resume",
                    self.config.max_recoveries
                ),
            };
            return self.end_with_error(id, record, recoveries - 1, error).await;
        }
        if begin != Begin::Fresh {
            crate::crash::point("recovery.before_resume");
            record.state = InstanceState::Running;
            push_transition(&mut record, TransitionKind::Resumed);
            self.commit_record(id, &record, Some(recoveries)).await?;
        }
        let checkpoints = match self.load_checkpoints(id) {
            Ok(c) => c,
            Err(e) => return self.end_with_error(id, record, recoveries, e).await,
        };
        let policy = erased.policy().unwrap_or(self.config.retry);
        let ctx = Ctx::new(
            id.to_string(),
            Arc::clone(self),
            policy,
            checkpoints,
            recoveries,
        );
        let outcome = tokio::select! {
            biased;
            error = ctx.aborted() => Err(error),
            output = CatchUnwind::new(&|| erased.run(&ctx, &record.input)) => output.unwrap_or_else(|panic| {
                Err(Error::WorkflowPanicked { instance: id.to_string(), message: panic_message(&*panic) })
            }),
        };
        let outcome = outcome.and_then(|output| {
            let left = ctx.unreplayed();
            if left.is_empty() {
                Ok(output)
            } else {
                Err(Error::Nondeterminism {
                    instance: id.to_string(),
                    detail: format!(
                        "the workflow finished without reaching recorded step(s) {}",
                        left.join(", ")
                    ),
                })
            }
        });
        match outcome {
            Ok(output) => {
                record.state = InstanceState::Completed {
                    output: output.clone(),
                };
                push_transition(&mut record, TransitionKind::Completed);
                crate::crash::point("complete.before_write");
                self.commit_record(id, &record, None).await?;
                crate::crash::point("complete.after_write");
                Ok(output)
            }
            Err(e) => self.end_with_error(id, record, ctx.recoveries(), e).await,
        }
    }

    /// Records that the instance is blocked (resumable) or failed, and returns `error`.
    async fn end_with_error(
        &self,
        id: &str,
        mut record: InstanceRecord,
        recoveries: u32,
        error: Error,
    ) -> Result<Vec<u8>> {
        let text = error.to_string();
        let active = error.blocks().then_some(recoveries);
        if let Error::NeedsAttention { reason, .. } = &error {
            record.state = InstanceState::NeedsAttention {
                error: reason.clone(),
            };
            push_transition(&mut record, TransitionKind::NeedsAttention { error: text });
        } else if active.is_some() {
            record.state = InstanceState::Blocked {
                error: text.clone(),
            };
            push_transition(&mut record, TransitionKind::Blocked { error: text });
        } else {
            record.state = InstanceState::Failed {
                error: text.clone(),
            };
            push_transition(&mut record, TransitionKind::Failed { error: text });
        }
        // If the store itself is failing this write fails too; the instance
        // then stays `Running` in the store and resumes at the next open.
        let _ = self.commit_record(id, &record, active).await;
        Err(error)
    }

    /// Writes the instance record durably, with its entry in `Active`: the
    /// count of resumes without progress while unfinished, `None` to remove it.
    async fn commit_record(
        &self,
        id: &str,
        record: &InstanceRecord,
        active: Option<u32>,
    ) -> Result<()> {
        let bytes = codec::encode(record).map_err(|reason| Error::Encode {
            instance: id.to_string(),
            what: "the instance record".into(),
            reason,
        })?;
        let mut batch = Batch::new();
        batch.put(Tree::Instances, instance_key(id), bytes);
        if let Some(recoveries) = active {
            batch.put(Tree::Active, instance_key(id), recoveries_value(recoveries));
        } else {
            batch.delete(Tree::Active, instance_key(id));
        }
        self.committer.commit(batch).await.map_err(Error::from)
    }

    /// Resumes every unfinished instance of a registered workflow.
    async fn recover(self: Arc<Self>) -> Result<RecoveryReport> {
        let store = Arc::clone(&self.store);
        let active = tokio::task::spawn_blocking(move || store.scan_prefix(Tree::Active, &[]))
            .await
            .map_err(|e| StoreError::Io {
                op: "recovery scan",
                reason: e.to_string(),
            })??;
        let mut report = RecoveryReport::default();
        for (key, _) in active {
            let id = match String::from_utf8(key) {
                Ok(id) => id,
                Err(e) => {
                    report.skipped.push((
                        String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        "the id is not UTF-8".into(),
                    ));
                    continue;
                }
            };
            let record = match self.load(&id) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    report
                        .skipped
                        .push((id, "listed as unfinished but has no record".into()));
                    continue;
                }
                Err(e) => {
                    report.skipped.push((id, e.to_string()));
                    continue;
                }
            };
            if let InstanceState::NeedsAttention { error } = &record.state {
                report
                    .skipped
                    .push((id, format!("needs attention: {error}")));
                continue;
            }
            let Some(erased) = self.registry.get(record.workflow.as_str()).cloned() else {
                let reason = format!("workflow {:?} is not registered", record.workflow);
                report.skipped.push((id, reason));
                continue;
            };
            let workflow: &'static str = self
                .registry
                .get_key_value(record.workflow.as_str())
                .map(|(k, _)| *k)
                .unwrap_or("");
            let slot = Arc::new(Slot {
                workflow,
                input: record.input.clone(),
                done: watch::Sender::new(None),
                task: Mutex::new(None),
            });
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), Arc::clone(&slot));
            Arc::clone(&self).spawn(id, erased, record, Begin::Resume, slot);
            report.resumed += 1;
        }
        Ok(report)
    }
}

/// Keeps the engine alive for a task and signals shutdown when dropped
/// (fields drop in order: the engine first, then the signal).
struct TaskGuard {
    core: Arc<Core>,
    _alive: mpsc::Sender<()>,
}

fn finished(outcome: Result<Vec<u8>>) -> watch::Receiver<Outcome> {
    watch::Sender::new(Some(outcome)).subscribe()
}

fn check_conflict(
    id: &str,
    workflow: &str,
    input: &[u8],
    stored_workflow: &str,
    stored_input: &[u8],
) -> Result<()> {
    if workflow != stored_workflow {
        return Err(Error::IdConflict {
            id: id.to_string(),
            existing: format!("workflow {stored_workflow:?}"),
        });
    }
    if input != stored_input {
        return Err(Error::IdConflict {
            id: id.to_string(),
            existing: "a different input".into(),
        });
    }
    Ok(())
}

fn push_transition(record: &mut InstanceRecord, kind: TransitionKind) {
    if record.transitions.len() >= MAX_TRANSITIONS
        && let Some(i) = record
            .transitions
            .iter()
            .position(|t| t.kind == TransitionKind::Resumed)
    {
        record.transitions.remove(i);
    }
    record.transitions.push(TransitionRecord {
        at_ms: now_ms(),
        kind,
    });
}
