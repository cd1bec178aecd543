//! [`Engine`] and its builder: open the store, register workflows, start,
//! attach to and resume instances.

use std::any::TypeId;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use tokio::sync::{Notify, mpsc, watch};

use crate::codec;
use crate::committer::Committer;
use crate::context::{Ctx, Signals};
use crate::error::{Error, Result, StoreError};
use crate::history::{self, History, Status};
use crate::manifest::Manifest;
use crate::park::ParkTable;
use crate::records::{
    CheckpointRecord, EventRecord, InstanceRecord, InstanceState, ParkRecord, TransitionKind,
    TransitionRecord, WaitCond, instance_key, instance_prefix, name_prefix, now_ms, occurrence_key,
    recoveries_of, recoveries_value,
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
    /// towards [`Config::max_recoveries`]. Carries the stored count of
    /// resumes without progress when the caller already read it.
    Resume(Option<u32>),
    /// Resumed by hand with [`Engine::resume`]: the count starts again.
    ResumeByHand,
    /// Woken from parking by its timer or an event: not a recovery.
    Wake,
}

/// A registered workflow with its types erased, so the engine can resume
/// instances it only knows by name.
trait Erased: Send + Sync {
    fn type_id(&self) -> TypeId;
    /// The workflow's manifest and its hash, built once at registration.
    fn manifest(&self) -> &(Manifest, u64);
    fn version(&self) -> u32;
    fn policy(&self) -> Option<RetryPolicy>;
    fn run<'a>(&self, ctx: &'a Ctx, input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>>>;
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

/// An instance that is live in this process (running, or parked with
/// someone waiting for its outcome): starters of the same id attach to it.
struct Slot {
    workflow: &'static str,
    input: Vec<u8>,
    done: watch::Sender<Outcome>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    signals: Arc<Signals>,
    /// Whether a task drives the instance now; changed under the `running` lock.
    driving: AtomicBool,
    /// Held while the instance's end is decided and written; `true` once it
    /// has ended (so a cancel and a completion cannot both win).
    ended: tokio::sync::Mutex<bool>,
}

impl Slot {
    fn new(workflow: &'static str, input: Vec<u8>, driving: bool) -> Arc<Slot> {
        Arc::new(Slot {
            workflow,
            input,
            done: watch::Sender::new(None),
            task: Mutex::new(None),
            signals: Arc::new(Signals::new()),
            driving: AtomicBool::new(driving),
            ended: tokio::sync::Mutex::new(false),
        })
    }
}

/// How a task driving an instance stopped.
enum DriveEnd {
    /// The instance ended (or was blocked) with this outcome.
    Finished(Result<Vec<u8>>),
    /// The instance parked; its table entry will wake it.
    Parked,
}

/// What recovery at [`EngineBuilder::open`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Unfinished instances that were resumed.
    pub resumed: usize,
    /// Instances parked in a sleep or a wait, put back in the park table
    /// without running (their timer or event wakes them).
    pub parked: usize,
    /// Unfinished instances left untouched, with the reason (their workflow
    /// is not registered, or their record does not decode).
    pub skipped: Vec<(String, String)>,
}

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

/// The engine's shared state.
pub(crate) struct Core {
    pub(crate) store: Arc<dyn Store>,
    /// Serializes event delivery, timed-out waits and cancellation.
    pub(crate) event_lock: tokio::sync::Mutex<()>,
    /// Parked instances; lock after `running` when both are needed.
    parked: Mutex<ParkTable>,
    /// Rung when an earlier deadline is parked.
    timer_bell: Arc<Notify>,
    timer_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// One permit: instances resumed again without progress run one at a
    /// time until they finish a step (see [`Core::drive`]).
    suspects: Arc<tokio::sync::Semaphore>,
    pub(crate) committer: Committer,
    pub(crate) config: Config,
    /// Registered workflows by (name, version).
    registry: HashMap<(&'static str, u32), Arc<dyn Erased>>,
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
    cache_bytes: u64,
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

    /// Bounds the embedded store's page cache to about `bytes` (default
    /// 64 MiB): memory that stays steady however many instances finish.
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
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
        let manifest = workflow.manifest();
        let hash = manifest.hash();
        self.workflows.push((
            <I::Workflow as Workflow>::NAME,
            Arc::new(Registered(workflow, (manifest, hash))),
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
        let mut registry: HashMap<(&'static str, u32), Arc<dyn Erased>> = HashMap::new();
        for (name, erased) in self.workflows {
            let name = (name, erased.version());
            if let Some(existing) = registry.get(&name)
                && existing.type_id() != erased.type_id()
            {
                return Err(Error::DuplicateWorkflow {
                    workflow: name.0.to_string(),
                });
            }
            registry.insert(name, erased);
        }
        let store: Arc<dyn Store> = match self.store {
            Some(store) => store,
            None => {
                let path = self.path;
                let cache = self.cache_bytes;
                let opened =
                    tokio::task::spawn_blocking(move || SledStore::open_with_cache(path, cache))
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
            event_lock: tokio::sync::Mutex::new(()),
            parked: Mutex::new(ParkTable::default()),
            timer_bell: Arc::new(Notify::new()),
            timer_task: Mutex::new(None),
            suspects: Arc::new(tokio::sync::Semaphore::new(1)),
            committer,
            config: self.config,
            registry,
            running: Mutex::new(HashMap::new()),
            alive: Mutex::new(Some(alive)),
            alive_rx: tokio::sync::Mutex::new(alive_rx),
            runtime: runtime.clone(),
        });
        let timers = runtime.spawn(Core::timers(
            Arc::downgrade(&core),
            Arc::clone(&core.timer_bell),
        ));
        *core.timer_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(timers.abort_handle());
        let opened = async {
            // Every registered manifest is kept in the store, so that an
            // instance's starting manifest can be read by later builds.
            let manifests: Vec<&Manifest> =
                core.registry.values().map(|e| &e.manifest().0).collect();
            let batch = crate::manifest::missing_manifests(&*core.store, &manifests)?;
            if !batch.ops.is_empty() {
                core.committer.commit(batch).await?;
            }
            Arc::clone(&core).recover().await
        };
        match opened.await {
            Ok(recovery) => Ok(Engine {
                core,
                recovery: Arc::new(recovery),
            }),
            Err(error) => {
                // Stop what recovery started and release the store, so that
                // the caller can open it again at once.
                let engine = Engine {
                    core,
                    recovery: Arc::default(),
                };
                engine.shutdown().await;
                Err(error)
            }
        }
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
    /// To let go of a parked instance's slot when the last handle drops.
    core: std::sync::Weak<Core>,
    _output: PhantomData<fn() -> O>,
}

impl<O> Drop for Handle<O> {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.release(&self.id, &self.done);
        }
    }
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
            None => Err(Error::ShutDown {
                instance: self.id.clone(),
            }),
        }
    }
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            path: PathBuf::from("durable.db"),
            store: None,
            cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
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
            core: Arc::downgrade(&self.core),
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
    /// [`Status::NeedsAttention`], a blocked one once its cause is fixed, or
    /// an [`Status::Incompatible`] one (checked again first). Its count of
    /// resumes without progress starts again. A running, completed or
    /// cancelled instance is attached to, as with [`attach`](Self::attach).
    /// A [`Status::Failed`] instance is not resumed: a step failed for good
    /// and that failure is its recorded outcome, so this returns
    /// [`Error::Failed`] (never `Ok` doing nothing); start a new instance.
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
        if manual && let InstanceState::Failed { error } = &record.state {
            // A failed instance's failure is its recorded outcome (a step
            // failed for good): resuming it would change that, so it is an
            // error rather than a silent no-op.
            return Err(Error::Failed {
                instance: id,
                reason: format!("{error}; a failed instance cannot be resumed, start a new one"),
            });
        }
        let done = Arc::clone(&self.core)
            .start_or_attach(W::<I>::NAME, erased, id.clone(), record.input, manual)
            .await?;
        Ok(Handle {
            id,
            done,
            core: Arc::downgrade(&self.core),
            _output: PhantomData,
        })
    }

    /// The status of instance `id`.
    pub fn status(&self, id: &str) -> Result<Status> {
        let record = self
            .core
            .load(id)?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
        Ok(self.core.status_of(id, &record))
    }

    /// Sends event `name` with `payload` to instance `id`, durably: when this
    /// returns, the event is on disk and will be delivered, even across a
    /// restart. Events of one name are consumed in the order sent, one per
    /// `wait_for!` occurrence; an event sent before the workflow reaches its
    /// wait is kept until then, and one sent after every wait of that name
    /// was satisfied is kept but never delivered again.
    ///
    /// Errors: [`Error::NotFound`], [`Error::InstanceFinished`], and
    /// [`Error::EventTypeMismatch`] when the instance already waits for this
    /// event with another payload type (decided atomically with delivery:
    /// nothing is stored then).
    pub async fn send_event<P: serde::Serialize + serde::de::DeserializeOwned + 'static>(
        &self,
        id: impl Into<String>,
        name: impl Into<String>,
        payload: P,
    ) -> Result<()> {
        let (id, name) = (id.into(), name.into());
        validate_id(&id)?;
        let core = &self.core;
        let payload = encode_value(&core.config, &id, &format!("event {name:?}"), &payload)?;
        let type_name = std::any::type_name::<P>();
        let shape = crate::manifest::shape_of::<P>();
        let _events = core.event_lock.lock().await;
        let record = core
            .load(&id)?
            .ok_or_else(|| Error::NotFound { id: id.clone() })?;
        ensure_unfinished(&id, &record.state)?;
        // Checked against the workflow's wait of that name, whether or not
        // the instance waits yet: nothing accepted here can block it later.
        if let Some(manifest) = core.manifest_for(&record)
            && let Some((_, site)) = manifest.site(&name)
            && let Some(types) = &site.types
            && types.value.fingerprint != shape.fingerprint
        {
            return Err(Error::EventTypeMismatch {
                instance: id,
                event: name,
                expected: types.value.text.clone(),
                got: shape.text.clone(),
            });
        }
        // The number this event gets: after every event of the name already
        // sent, and after every wait of the name that already ended.
        let events = core
            .store
            .scan_prefix(Tree::Events, &name_prefix(&id, &name))?
            .len();
        let ended_waits = core
            .store
            .scan_prefix(Tree::Checkpoints, &name_prefix(&id, &name))?
            .iter()
            .filter(|(_, v)| {
                codec::decode::<CheckpointRecord>(v).is_ok_and(|c| {
                    matches!(
                        c.state,
                        crate::records::CheckpointState::Received { .. }
                            | crate::records::CheckpointState::TimedOut { .. }
                    )
                })
            })
            .count();
        let seq = u32::try_from(events.max(ended_waits)).unwrap_or(u32::MAX);
        if let Some(expected) = core.waiting_type(&id, &name, seq)
            && expected != shape.text
        {
            return Err(Error::EventTypeMismatch {
                instance: id,
                event: name,
                expected,
                got: shape.text.clone(),
            });
        }
        let event = EventRecord {
            type_name: type_name.to_string(),
            fingerprint: shape.fingerprint,
            shape: shape.text.clone(),
            payload,
            sent_at_ms: now_ms(),
        };
        let value = codec::encode(&event).map_err(|reason| Error::Encode {
            instance: id.clone(),
            what: format!("event {name:?}"),
            reason,
        })?;
        let mut batch = Batch::new();
        batch.put(Tree::Events, occurrence_key(&id, &name, seq), value);
        core.committer.commit(batch).await?;
        core.deliver(&id, &name, seq);
        Ok(())
    }

    /// Cancels instance `id`, durably: no new step starts after this
    /// returns, a step running now finishes, and the instance ends
    /// [`Status::Cancelled`] (its handles return [`Error::Cancelled`]). A
    /// parked instance is cancelled at once, without waiting for its timer.
    ///
    /// Errors: [`Error::NotFound`], [`Error::InstanceFinished`].
    pub async fn cancel(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let core = &self.core;
        let _events = core.event_lock.lock().await;
        let mut record = core
            .load(id)?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
        ensure_unfinished(id, &record.state)?;
        let slot = core
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let mut ended = match &slot {
            Some(slot) => {
                let ended = slot.ended.lock().await;
                if *ended {
                    return Err(Error::InstanceFinished {
                        instance: id.to_string(),
                        status: "completed",
                    });
                }
                slot.signals.cancelled.store(true, Ordering::SeqCst);
                slot.signals.ring();
                Some(ended)
            }
            None => None,
        };
        // Reload: the instance may have moved on while we waited for its end lock.
        if let Some(latest) = core.load(id)? {
            record = latest;
        }
        ensure_unfinished(id, &record.state)?;
        let was_parked = core
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .is_some();
        record.state = InstanceState::Cancelled;
        push_transition(&mut record, TransitionKind::Cancelled);
        core.commit_record(id, &record, None).await?;
        if let Some(ended) = ended.as_mut() {
            **ended = true;
        }
        drop(ended);
        if let Some(slot) = slot
            && (was_parked || !slot.driving.load(Ordering::SeqCst))
        {
            core.finish_slot(
                id,
                &slot,
                Err(Error::Cancelled {
                    instance: id.to_string(),
                }),
            );
        }
        Ok(())
    }

    /// The audit trail of instance `id`: its transitions and every step
    /// occurrence with attempts, times and outcome.
    pub fn history(&self, id: &str) -> Result<History> {
        let record = self
            .core
            .load(id)?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
        let checkpoints = self.core.load_checkpoints(id)?;
        let mut history = history::history_of(id, &record, checkpoints);
        history.status = self.core.status_of(id, &record);
        Ok(history)
    }

    /// The deploy gate: every unfinished instance in the store that the
    /// registered code cannot run, with the reason (a recorded site that is
    /// gone or changed, a workflow that is not registered), and every
    /// registered site whose type could not be traced (compared by its Rust
    /// type name only). Empty means this build can resume everything.
    ///
    /// Reads the store only; nothing is changed.
    pub fn compatibility(&self) -> Result<Vec<Incompatibility>> {
        let core = &self.core;
        let mut out = Vec::new();
        let mut names: Vec<&(&str, u32)> = core.registry.keys().collect();
        names.sort();
        for name in names {
            for untraceable in core.registry[name].manifest().0.untraceable() {
                out.push(Incompatibility {
                    instance: None,
                    workflow: name.0.to_string(),
                    reason: format!(
                        "{untraceable}: its type could not be traced and is compared by its Rust name only"
                    ),
                });
            }
        }
        for (key, _) in core.store.scan_prefix(Tree::Active, &[])? {
            let id = String::from_utf8_lossy(&key).into_owned();
            let Some(record) = core.load(&id)? else {
                continue;
            };
            let reason = match core.lookup(&record) {
                None => Some(core.not_registered(&record)),
                Some((_, erased)) => {
                    let checkpoints = core.load_checkpoints(&id)?;
                    match core.admit(&id, &record, erased.manifest(), &checkpoints) {
                        Err(Error::Incompatible { reason, .. }) => Some(reason),
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
        if let Some(timers) = self
            .core
            .timer_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            timers.abort();
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

    /// How many instances are parked in this process now, for benchmarks.
    #[doc(hidden)]
    pub fn parked_count(&self) -> usize {
        self.core
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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

/// The event name in a key of `Events` of instance `id`.
fn event_name(id: &str, key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(instance_prefix(id).as_slice())?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    String::from_utf8(rest.get(4..4 + len)?.to_vec()).ok()
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
    /// Drops the slot of parked instance `id` when `last` is the last
    /// receiver of its outcome: a parked instance nobody waits for holds
    /// nothing but its park table entry.
    fn release(&self, id: &str, last: &watch::Receiver<Outcome>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = running.get(id) else { return };
        let probe = slot.done.subscribe();
        // Two receivers: the probe and `last`, which is still alive.
        let unwatched = last.same_channel(&probe) && slot.done.receiver_count() <= 2;
        drop(probe);
        if unwatched && !slot.driving.load(Ordering::SeqCst) {
            running.remove(id);
        }
    }

    /// The status of `id`, with what it waits for if it is parked.
    fn status_of(&self, id: &str, record: &InstanceRecord) -> Status {
        if record.state == InstanceState::Running
            && let Some(parked) = self
                .parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
        {
            let until = parked.deadline_ms.map(history::time);
            return match parked.events.first() {
                Some(event) => Status::Waiting {
                    event: event.name.to_string(),
                    until,
                },
                None => Status::Sleeping {
                    until: until.unwrap_or(std::time::UNIX_EPOCH),
                },
            };
        }
        history::status_of(&record.state)
    }

    /// The payload type instance `id` waits for as event `name` number `seq`, if it waits.
    fn waiting_type(&self, id: &str, name: &str, seq: u32) -> Option<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = running.get(id) {
            let waiting = slot
                .signals
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(t) = waiting
                .iter()
                .find(|c| c.name == name && c.occurrence == seq)
                .and_then(|c| c.event_type.clone())
            {
                return Some(t);
            }
        }
        drop(running);
        let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let wait = parked
            .get(id)?
            .events
            .iter()
            .find(|e| &*e.name == name && e.occurrence == seq)?;
        Some(wait.type_name.to_string())
    }

    /// Tells instance `id` that event `name` number `seq` is stored: wakes it
    /// if it is parked on it, rings its waits if it is running.
    fn deliver(self: &Arc<Self>, id: &str, name: &str, seq: u32) {
        let woken = {
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            let waits = parked.get(id).is_some_and(|p| {
                p.events
                    .iter()
                    .any(|e| &*e.name == name && e.occurrence == seq)
            });
            waits && parked.remove(id).is_some()
        };
        if woken {
            self.wake(id);
        } else if let Some(slot) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            slot.signals.ring();
        }
    }

    /// [`Error::Incompatible`] if what instance `id` recorded does not fit
    /// `manifest`, the code about to run it (see `manifest::check_history`).
    /// Otherwise the patches of the manifest it started with, if that is
    /// another one (`None`: it started on this code).
    fn admit(
        &self,
        id: &str,
        record: &InstanceRecord,
        (manifest, hash): &(Manifest, u64),
        checkpoints: &[CheckpointRecord],
    ) -> Result<Option<Vec<String>>> {
        if record.manifest == *hash {
            return Ok(None);
        }
        let started = crate::manifest::load_manifest(&*self.store, record.manifest);
        let events = self
            .store
            .scan_prefix(Tree::Events, &instance_prefix(id))?
            .into_iter()
            .filter_map(|(key, value)| {
                let event: EventRecord = codec::decode(&value).ok()?;
                Some((event_name(id, &key)?, event.fingerprint, event.shape))
            })
            .collect();
        let recorded = crate::manifest::Recorded {
            checkpoints,
            events,
        };
        crate::manifest::check_history(manifest, started.as_ref(), &recorded).map_err(
            |reason| Error::Incompatible {
                instance: id.to_string(),
                workflow: record.workflow.clone(),
                reason,
            },
        )?;
        Ok(Some(started.map_or_else(Vec::new, |m| {
            m.sites
                .iter()
                .filter(|s| s.kind == crate::manifest::SiteKind::Patch)
                .map(|s| s.name.clone())
                .collect()
        })))
    }

    /// The registered version of the workflow instance `record` started on.
    fn lookup(&self, record: &InstanceRecord) -> Option<(&'static str, Arc<dyn Erased>)> {
        self.registry
            .iter()
            .find(|((name, version), _)| *name == record.workflow && *version == record.version)
            .map(|((name, _), erased)| (*name, Arc::clone(erased)))
    }

    /// Why instance `record` has no registered workflow here.
    fn not_registered(&self, record: &InstanceRecord) -> String {
        let mut others: Vec<u32> = self
            .registry
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

    /// The manifest instance `record` runs on here, or the one it started
    /// with if the store has it.
    fn manifest_for(&self, record: &InstanceRecord) -> Option<Manifest> {
        if let Some((_, erased)) = self.lookup(record) {
            return Some(erased.manifest().0.clone());
        }
        crate::manifest::load_manifest(&*self.store, record.manifest)
    }

    fn registered<W: Workflow>(&self) -> Result<Arc<dyn Erased>> {
        match self.registry.get(&(W::NAME, W::VERSION)) {
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
                        | InstanceState::Incompatible { .. }
                        | InstanceState::NeedsAttention { .. } => Some(record),
                    }
                }
                None => None,
            };
            let parked = record.is_some()
                && self
                    .parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&id);
            let slot = Slot::new(workflow, input.clone(), !parked);
            running.insert(id.clone(), Arc::clone(&slot));
            if parked {
                // Its timer or event wakes it; until then it needs no task.
                return Ok(slot.done.subscribe());
            }
            match record {
                Some(record) => (slot, Err(record)),
                None => (slot, Ok(())),
            }
        };
        let done = slot.done.subscribe();
        let (record, begin) = match fresh {
            Err(record) if manual => (record, Begin::ResumeByHand),
            Err(record) => (record, Begin::Resume(None)),
            Ok(()) => {
                let now = now_ms();
                let record = InstanceRecord {
                    workflow: workflow.to_string(),
                    version: erased.version(),
                    manifest: erased.manifest().1,
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
        // An instance runs on the version it started on, whichever version
        // of the workflow the caller named.
        let erased = if begin == Begin::Fresh {
            erased
        } else {
            match self.lookup(&record) {
                Some((_, erased)) => erased,
                None => {
                    let error = Error::NotRegistered {
                        workflow: format!("{} (version {})", record.workflow, record.version),
                    };
                    self.finish_slot(&id, &slot, Err(error.clone()));
                    return Err(error);
                }
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
            if let DriveEnd::Finished(outcome) = guard
                .core
                .drive(&id, erased, record, begin, &task_slot)
                .await
            {
                guard.core.finish_slot(&id, &task_slot, outcome);
            }
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

    /// Runs one instance until it ends, is blocked or parks, and records that.
    async fn drive(
        self: &Arc<Self>,
        id: &str,
        erased: Arc<dyn Erased>,
        mut record: InstanceRecord,
        begin: Begin,
        slot: &Arc<Slot>,
    ) -> DriveEnd {
        // Before any body runs: does the recorded history fit this code?
        let checkpoints = match self.load_checkpoints(id) {
            Ok(c) => c,
            Err(e) => return DriveEnd::Finished(Err(e)),
        };
        let started_patches = match self.admit(id, &record, erased.manifest(), &checkpoints) {
            Ok(patches) => patches,
            Err(e) => {
                let stored = self
                    .store
                    .get(Tree::Active, &instance_key(id))
                    .ok()
                    .flatten()
                    .map_or(0, |v| recoveries_of(&v));
                return DriveEnd::Finished(self.end(id, record, stored, slot, Err(e)).await);
            }
        };
        let mut lane = None;
        let recoveries = match begin {
            Begin::Fresh | Begin::Wake => 0,
            Begin::ResumeByHand => 1,
            Begin::Resume(known) => {
                let stored = match known {
                    Some(stored) => stored,
                    None => match self.store.get(Tree::Active, &instance_key(id)) {
                        Ok(stored) => stored.as_deref().map_or(0, recoveries_of),
                        Err(e) => return DriveEnd::Finished(Err(e.into())),
                    },
                };
                if stored > 0 {
                    // Resumed before without progress: it may be what crashes
                    // the process. Such suspects run one at a time until each
                    // finishes a step, so an innocent instance that was merely
                    // running at the same crashes is not counted with them.
                    lane = Arc::clone(&self.suspects).acquire_owned().await.ok();
                }
                stored.saturating_add(1)
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
            return DriveEnd::Finished(
                self.end(id, record, recoveries - 1, slot, Err(error)).await,
            );
        }
        if matches!(begin, Begin::Resume(_) | Begin::ResumeByHand) {
            crate::crash::point("recovery.before_resume");
            record.state = InstanceState::Running;
            push_transition(&mut record, TransitionKind::Resumed);
            if let Err(e) = self.commit_record(id, &record, Some(recoveries)).await {
                return DriveEnd::Finished(Err(e));
            }
        }
        let policy = erased.policy().unwrap_or(self.config.retry);
        slot.signals
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let ctx = Ctx::new(
            id.to_string(),
            Arc::clone(self),
            policy,
            checkpoints,
            recoveries,
            Arc::clone(&slot.signals),
        );
        ctx.hold_lane(lane);
        ctx.set_started_patches(started_patches);
        let flow = {
            let mut run = pin!(CatchUnwind::new(&|| erased.run(&ctx, &record.input)));
            let mut aborted = pin!(ctx.aborted());
            std::future::poll_fn(|cx| {
                if let Poll::Ready(error) = aborted.as_mut().poll(cx) {
                    return Poll::Ready(Err(error));
                }
                match run.as_mut().poll(cx) {
                    Poll::Ready(Ok(output)) => Poll::Ready(output.map(Ok)),
                    Poll::Ready(Err(panic)) => Poll::Ready(Err(Error::WorkflowPanicked {
                        instance: id.to_string(),
                        message: panic_message(&*panic),
                    })),
                    Poll::Pending => {
                        match slot.signals.parkable(now_ms(), crate::wait::PARK_AFTER_MS) {
                            Some(conds) => Poll::Ready(Ok(Err(conds))),
                            None => Poll::Pending,
                        }
                    }
                }
            })
            .await
        };
        let outcome = match flow {
            Ok(Err(conds)) => {
                drop(ctx);
                return match self.park(id, conds, slot).await {
                    Ok(()) => DriveEnd::Parked,
                    Err(e) => {
                        DriveEnd::Finished(self.end(id, record, recoveries, slot, Err(e)).await)
                    }
                };
            }
            Ok(Ok(output)) => {
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
            }
            Err(e) => Err(e),
        };
        let recoveries = ctx.recoveries();
        drop(ctx);
        DriveEnd::Finished(self.end(id, record, recoveries, slot, outcome).await)
    }

    /// Records how the instance ended: completed, blocked (resumable),
    /// failed or cancelled. A cancel that was recorded first wins.
    async fn end(
        &self,
        id: &str,
        mut record: InstanceRecord,
        recoveries: u32,
        slot: &Slot,
        outcome: Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut ended = slot.ended.lock().await;
        if slot.signals.is_cancelled() {
            *ended = true;
            return Err(Error::Cancelled {
                instance: id.to_string(),
            });
        }
        let result = match outcome {
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
            Err(error) => self.end_with_error(id, record, recoveries, error).await,
        };
        *ended = result.is_ok() || !matches!(&result, Err(e) if e.blocks());
        result
    }

    /// Parks the instance on `conds`: records what it waits for, then hands
    /// it to the park table (or wakes it at once if an awaited event is there).
    async fn park(
        self: &Arc<Self>,
        id: &str,
        conds: Vec<WaitCond>,
        slot: &Arc<Slot>,
    ) -> Result<()> {
        let parked_at_ms = now_ms();
        let value = codec::encode(&ParkRecord {
            parked_at_ms,
            conds: conds.clone(),
        })
        .map_err(|reason| Error::Encode {
            instance: id.to_string(),
            what: "a park record".into(),
            reason,
        })?;
        let mut batch = Batch::new();
        batch.put(Tree::Timers, instance_key(id), value);
        self.committer.commit(batch).await?;
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            slot.driving.store(false, Ordering::SeqCst);
            *slot.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if slot.done.receiver_count() == 0
                && running.get(id).is_some_and(|s| Arc::ptr_eq(s, slot))
            {
                running.remove(id);
            }
        }
        if slot.signals.is_cancelled() {
            return Err(Error::Cancelled {
                instance: id.to_string(),
            });
        }
        let earliest = self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, &conds, |d| d);
        if earliest {
            self.timer_bell.notify_one();
        }
        self.wake_if_event_arrived(id, &conds)
    }

    /// Wakes parked `id` if an event one of `conds` waits for is already stored.
    fn wake_if_event_arrived(self: &Arc<Self>, id: &str, conds: &[WaitCond]) -> Result<()> {
        for cond in conds.iter().filter(|c| c.event_type.is_some()) {
            if self
                .store
                .get(
                    Tree::Events,
                    &occurrence_key(id, &cond.name, cond.occurrence),
                )?
                .is_some()
            {
                let woken = self
                    .parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id)
                    .is_some();
                if woken {
                    self.wake(id);
                }
                break;
            }
        }
        Ok(())
    }

    /// Starts a task for parked instance `id`, just taken out of the park table.
    fn wake(self: &Arc<Self>, id: &str) {
        let record = match self.load(id) {
            Ok(Some(record)) if record.state == InstanceState::Running => record,
            _ => return,
        };
        let Some((workflow, erased)) = self.lookup(&record) else {
            return;
        };
        let slot = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let slot = running
                .entry(id.to_string())
                .or_insert_with(|| Slot::new(workflow, record.input.clone(), false));
            if slot.driving.swap(true, Ordering::SeqCst) {
                return;
            }
            Arc::clone(slot)
        };
        Arc::clone(self).spawn(id.to_string(), erased, record, Begin::Wake, slot);
    }

    /// Wakes parked instances whose deadline has come, until the engine is gone.
    async fn timers(core: std::sync::Weak<Core>, bell: Arc<Notify>) {
        loop {
            let next = {
                let Some(core) = core.upgrade() else { return };
                let due = core
                    .parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_due(now_ms());
                for id in due {
                    core.wake(&id);
                }
                core.parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .next_deadline()
            };
            // Re-read the clock at least once a minute, in case it jumps.
            let wait = next
                .map_or(60_000, |d| d.saturating_sub(now_ms()))
                .min(60_000);
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
                _ = bell.notified() => {}
            }
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
        if let Error::Incompatible { reason, .. } = &error {
            let state = InstanceState::Incompatible {
                error: reason.clone(),
            };
            if record.state == state {
                // Already set aside for this reason: left untouched.
                return Err(error);
            }
            record.state = state;
            push_transition(&mut record, TransitionKind::Incompatible { error: text });
        } else if let Error::Cancelled { .. } = &error {
            record.state = InstanceState::Cancelled;
            push_transition(&mut record, TransitionKind::Cancelled);
        } else if let Error::NeedsAttention { reason, .. } = &error {
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
            batch.delete(Tree::Timers, instance_key(id));
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
        let store = Arc::clone(&self.store);
        let parks = tokio::task::spawn_blocking(move || store.scan_prefix(Tree::Timers, &[]))
            .await
            .map_err(|e| StoreError::Io {
                op: "recovery scan",
                reason: e.to_string(),
            })??;
        let mut parks: HashMap<Vec<u8>, Vec<u8>> = parks.into_iter().collect();
        let mut report = RecoveryReport::default();
        let now = now_ms();
        for (key, count) in active {
            let park = parks.remove(&key);
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
            let Some((workflow, erased)) = self.lookup(&record) else {
                let reason = self.not_registered(&record);
                report.skipped.push((id, reason));
                continue;
            };
            if record.state == InstanceState::Running
                && let Some(park) = park.and_then(|p| codec::decode::<ParkRecord>(&p).ok())
            {
                // Parked when the process stopped: back into the table, no task.
                // A clock set backwards meanwhile cannot stretch a wait.
                let clamp = |d: u64| d.min(now.saturating_add(d.saturating_sub(park.parked_at_ms)));
                self.parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(&id, &park.conds, clamp);
                self.wake_if_event_arrived(&id, &park.conds)?;
                report.parked += 1;
                self.timer_bell.notify_one();
                continue;
            }
            let slot = Slot::new(workflow, record.input.clone(), true);
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), Arc::clone(&slot));
            let stored = recoveries_of(&count);
            Arc::clone(&self).spawn(id, erased, record, Begin::Resume(Some(stored)), slot);
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

/// [`Error::InstanceFinished`] if the instance has finished.
fn ensure_unfinished(id: &str, state: &InstanceState) -> Result<()> {
    match finished_status(state) {
        Some(status) => Err(Error::InstanceFinished {
            instance: id.to_string(),
            status,
        }),
        None => Ok(()),
    }
}

/// How a finished instance ended, or `None` if it has not.
fn finished_status(state: &InstanceState) -> Option<&'static str> {
    match state {
        InstanceState::Completed { .. } => Some("completed"),
        InstanceState::Failed { .. } => Some("failed"),
        InstanceState::Cancelled => Some("cancelled"),
        _ => None,
    }
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
