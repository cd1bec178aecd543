//! [`EngineBuilder`]: where the store is, which workflows run, the clock and
//! the engine-wide defaults; [`open`](EngineBuilder::open) puts it together.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::backend::embedded::Embedded;
use crate::codec;
use crate::error::{Error, Result, StoreError};
use crate::retry::RetryPolicy;
use crate::services::Services;
use crate::store::{SledStore, Store};
use crate::time::{Clock, SystemClock};
use crate::workflow::IntoWorkflow;

use super::instances::Instances;
use super::registry::{self, Entry, Registry};
use super::scheduler::Scheduler;
use super::{Core, Engine};

/// The default limit of one encoded step outcome, input or output: 1 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1 << 20;

/// The default of [`EngineBuilder::max_recoveries`].
pub const DEFAULT_MAX_RECOVERIES: u32 = 10;

/// Engine-wide settings the driver reads.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub retry: RetryPolicy,
    pub max_recoveries: u32,
    /// Finished instances older than this are purged in the background.
    pub retention: Option<std::time::Duration>,
}

/// Builds an [`Engine`]: where the store is, which workflows it runs, defaults.
#[must_use]
pub struct EngineBuilder {
    path: PathBuf,
    store: Option<Arc<dyn Store>>,
    cache_bytes: u64,
    workflows: Vec<Entry>,
    queues: Vec<crate::queue::Queue>,
    config: Config,
    max_value_size: usize,
    clock: Arc<dyn Clock>,
    /// A PostgreSQL database instead of the embedded store.
    #[cfg(feature = "postgres")]
    postgres: Option<Postgres>,
    #[cfg(feature = "testing")]
    hooks: Option<Arc<crate::hooks::Hooks>>,
}

/// Where and how to reach PostgreSQL.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
struct Postgres {
    url: String,
    schema: String,
    options: crate::backend::postgres::PgOptions,
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
            .field("max_value_size", &self.max_value_size)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            path: PathBuf::from("durable.db"),
            store: None,
            cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            workflows: Vec::new(),
            queues: Vec::new(),
            config: Config {
                retry: RetryPolicy::default(),
                max_recoveries: DEFAULT_MAX_RECOVERIES,
                retention: None,
            },
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            clock: Arc::new(SystemClock),
            #[cfg(feature = "postgres")]
            postgres: None,
            #[cfg(feature = "testing")]
            hooks: None,
        }
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

    /// Runs on the PostgreSQL database at `url` (feature `postgres`)
    /// instead of the embedded store: many processes on one schema, each
    /// claiming the instances it runs, every write fenced. A process that
    /// registers no workflow is a pure client (it starts, signals, cancels
    /// and inspects, and runs nothing).
    ///
    /// ```no_run
    /// # async fn demo() -> durable_runtime::Result<()> {
    /// let engine = durable_runtime::Engine::builder()
    ///     .postgres("postgres://app@db.internal/app")
    ///     .schema("durable")
    ///     .open()
    ///     .await?;
    /// # let _ = engine; Ok(())
    /// # }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        let pg = self.postgres.get_or_insert_with(|| Postgres {
            url: String::new(),
            schema: "durable".into(),
            options: Default::default(),
        });
        pg.url = url.into();
        self
    }

    /// The PostgreSQL schema the tables live in (default `durable`; created
    /// if missing). Processes that share a schema share instances.
    #[cfg(feature = "postgres")]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        let pg = self.postgres.get_or_insert_with(|| Postgres {
            url: String::new(),
            schema: "durable".into(),
            options: Default::default(),
        });
        pg.schema = schema.into();
        self
    }

    /// How long a worker's lease on PostgreSQL lasts without renewal
    /// (default 15 s; renewed every third of it). After a worker dies, its
    /// instances are taken over within about the lease, a fifth of it as
    /// grace, and one reaper period (half a lease): 15 + 3 + 7.5 s by default.
    #[cfg(feature = "postgres")]
    pub fn lease(mut self, lease: std::time::Duration) -> Self {
        if let Some(pg) = &mut self.postgres {
            pg.options.lease = lease;
        }
        self
    }

    /// How often a worker looks for claimable instances on PostgreSQL when
    /// no notification listener is proven (default 250 ms; behind a
    /// transaction-mode pooler this is how wake-ups arrive).
    #[cfg(feature = "postgres")]
    pub fn poll_interval(mut self, every: std::time::Duration) -> Self {
        if let Some(pg) = &mut self.postgres {
            pg.options.poll = every;
        }
        self
    }

    /// Whether to LISTEN for other processes' hints on PostgreSQL (default
    /// on; off, wake-ups come from polling alone).
    #[cfg(feature = "postgres")]
    pub fn listen(mut self, listen: bool) -> Self {
        if let Some(pg) = &mut self.postgres {
            pg.options.listen = listen;
        }
        self
    }

    /// Uses `store` instead of the embedded sled store at [`path`](Self::path).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Reads time from `clock` instead of the system clock: every timestamp,
    /// sleep deadline, wait timeout and retry delay. A
    /// [`ManualClock`](crate::time::ManualClock) lets a test pass days in
    /// microseconds.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Installs the test kit's hooks (step mocks, body counters).
    #[cfg(feature = "testing")]
    pub(crate) fn hooks(mut self, hooks: Arc<crate::hooks::Hooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Registers a workflow so the engine can start it and resume its instances.
    pub fn register<I: IntoWorkflow>(mut self, workflow: I) -> Self {
        self.workflows
            .push(registry::entry::<I::Workflow>(workflow.into_workflow()));
        self
    }

    /// Declares queue `queue` (its name and limits), which
    /// [`Engine::enqueue`](crate::Engine::enqueue) can then put instances
    /// on. Checked at open: an empty name, a name declared twice or a
    /// limit of zero is [`UsageError::InvalidQueue`](crate::UsageError::InvalidQueue).
    /// Every worker of a shared store should declare the same limits.
    pub fn queue(mut self, queue: crate::queue::Queue) -> Self {
        self.queues.push(queue);
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
        self.max_value_size = bytes.min(codec::DECODE_LIMIT / 2);
        self
    }

    /// Purges finished instances (completed, failed, cancelled) once they
    /// have been finished for `age`, in a background task on the engine's
    /// clock: their record, checkpoints, events and index entries go, as
    /// [`Engine::purge`] does. It runs at open and then every `age / 4`
    /// (at most hourly, at least every second). Unfinished instances are
    /// never purged. Off by default: history is kept forever.
    ///
    /// ```
    /// # async fn demo() -> durable_runtime::Result<()> {
    /// use std::time::Duration;
    ///
    /// let engine = durable_runtime::Engine::builder()
    ///     .path("orders.db")
    ///     .retention(Duration::from_secs(7 * 24 * 3600))
    ///     .open()
    ///     .await?;
    /// # engine.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn retention(mut self, age: std::time::Duration) -> Self {
        self.config.retention = Some(age);
        self
    }

    /// How many times in a row an instance may be resumed (after a crash or a
    /// block) without finishing a step before it is set aside as
    /// [`Status::NeedsAttention`](crate::Status::NeedsAttention) instead of
    /// being resumed again: a step that kills the process every time it runs
    /// must not take the service down forever. Default 10. The count is
    /// stored before each resume.
    pub fn max_recoveries(mut self, resumes: u32) -> Self {
        self.config.max_recoveries = resumes;
        self
    }

    /// Opens (or creates) the store and resumes, in the background, every
    /// unfinished instance of a registered workflow.
    ///
    /// Errors: [`StoreError::Locked`], [`StoreError::Corrupt`],
    /// [`StoreError::FormatTooNew`] (inside [`Error::Store`]),
    /// [`UsageError::DuplicateWorkflow`](crate::UsageError::DuplicateWorkflow), [`UsageError::NoRuntime`](crate::UsageError::NoRuntime).
    pub async fn open(mut self) -> Result<Engine> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Usage(crate::error::UsageError::NoRuntime))?;
        let registry = Registry::build(std::mem::take(&mut self.workflows))?;
        let queues = super::queues::Queues::build(std::mem::take(&mut self.queues))?;
        crate::metrics::describe();
        #[allow(unused_mut)]
        let mut poll = None;
        #[cfg(feature = "postgres")]
        let postgres = self.postgres.clone();
        #[cfg(not(feature = "postgres"))]
        let postgres: Option<()> = None;
        let backend: Arc<dyn Backend> = match postgres {
            #[cfg(feature = "postgres")]
            Some(pg) => {
                // The backend's own tick hints every poll interval; this
                // poll resolves handles of instances other processes finish.
                poll = Some(pg.options.poll.max(std::time::Duration::from_millis(100)));
                Arc::new(
                    crate::backend::postgres::PgBackend::connect(
                        &pg.url,
                        &pg.schema,
                        pg.options,
                        Arc::clone(&self.clock),
                    )
                    .await?,
                )
            }
            #[cfg(not(feature = "postgres"))]
            Some(()) => unreachable!("no PostgreSQL without the feature"),
            None => self.open_embedded().await?,
        };
        let core = Arc::new(Core {
            services: Arc::new({
                #[allow(unused_mut)]
                let mut services = Services::new(backend, self.clock, self.max_value_size);
                #[cfg(feature = "testing")]
                {
                    services.hooks = self.hooks;
                }
                services
            }),
            config: self.config,
            registry,
            instances: Instances::new(),
            scheduler: Scheduler::default(),
            queues,
            suspects: Arc::new(tokio::sync::Semaphore::new(1)),
            runtime: runtime.clone(),
        });
        // Instances start children through the engine (recovery may resume
        // a parent at once).
        let _ = core
            .services
            .starter
            .set(Arc::new(super::children::CoreStarter(Arc::downgrade(
                &core,
            ))));
        let recovered = async {
            core.store_manifests().await?;
            core.recover().await
        };
        match recovered.await {
            Ok(recovery) => {
                let claims = runtime.spawn(Core::claim_loop(Arc::downgrade(&core), poll));
                *core
                    .scheduler
                    .claim_task
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(claims);
                let flows = runtime.spawn(Core::flow_loop(Arc::downgrade(&core), poll));
                *core
                    .scheduler
                    .flow_task
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(flows);
                if !core.queues.specs.is_empty() {
                    let dispatch = runtime.spawn(Core::dispatch_loop(Arc::downgrade(&core), poll));
                    *core
                        .scheduler
                        .dispatch_task
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(dispatch);
                }
                if let Some(age) = core.config.retention {
                    let purges = runtime.spawn(Core::retention_loop(Arc::downgrade(&core), age));
                    *core
                        .scheduler
                        .retention_task
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(purges);
                }
                Ok(Engine {
                    core,
                    recovery: Arc::new(recovery),
                })
            }
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

impl EngineBuilder {
    /// The embedded backend over the configured store (sled at the path by
    /// default).
    async fn open_embedded(&mut self) -> Result<Arc<dyn Backend>> {
        let store: Arc<dyn Store> = match self.store.take() {
            Some(store) => store,
            None => {
                let path = self.path.clone();
                let cache = self.cache_bytes;
                let opened =
                    tokio::task::spawn_blocking(move || SledStore::open_with_cache(path, cache))
                        .await
                        .map_err(|e| StoreError::io("open", e))?;
                Arc::new(opened?)
            }
        };
        let clock = Arc::clone(&self.clock);
        // Reads the unfinished instances and park records once: blocking.
        let embedded = tokio::task::spawn_blocking(move || Embedded::open(store, clock))
            .await
            .map_err(|e| StoreError::io("open", e))??;
        Ok(Arc::new(embedded))
    }
}

/// Used by `Core`'s fields that hold an optional task.
pub(super) type TaskSlot = Mutex<Option<tokio::task::AbortHandle>>;
