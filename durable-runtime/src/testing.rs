//! A test kit for workflows (feature `testing`): an engine on the in-memory
//! store with a manual clock, so a three-day `sleep!`, a 72-hour wait
//! timeout or an hour of retry backoff is tested in microseconds, and
//! deterministically: time moves only when the test says so, and
//! [`TestEngine::run_until_idle`] waits for what the engine can do before
//! it has to wait for time or for an event.
//!
//! Beyond one engine:
//!
//! - **Crash at every step**: [`TestEngine::crash_at_every_step`] runs a
//!   workflow cleanly, then again with a crash before and after each step's
//!   checkpoint, resumes it on what the store held, and reports every run
//!   whose output differs or whose bodies ran more than once more
//!   ([`CrashReport`]). [`ProcessCrashTest`] does the same with child
//!   processes killed by `SIGKILL` on the embedded store (Unix).
//! - **Replay tests**: [`TestEngine::export`] (or [`Export::from_engine`]
//!   for any engine) writes an instance's history to a file; [`replay`]
//!   replays it against the current code without running a body and reports
//!   the first divergence with its site ([`ReplayReport`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> durable_runtime::Result<()> {
//! use std::time::Duration;
//! use durable_runtime::{BoxFuture, Ctx, Engine, IntoWorkflow, Status, Workflow};
//! use durable_runtime::manifest::{SiteDecl, SiteKind};
//! use durable_runtime::testing::TestEngine;
//!
//! /// Sleeps three days, then answers (written by hand here; `#[durable]`
//! /// writes this for an `async fn`).
//! #[derive(Clone, Copy)]
//! struct CoolOff;
//! impl Workflow for CoolOff {
//!     type Input = u32;
//!     type Output = u32;
//!     const NAME: &'static str = "cool-off";
//!     const SITES: &'static [SiteDecl] =
//!         &[SiteDecl { name: "cool-off", kind: SiteKind::Sleep, guard: None }];
//!     fn run<'a>(self, ctx: &'a Ctx, n: u32) -> BoxFuture<'a, u32> {
//!         Box::pin(async move {
//!             ctx.sleep("cool-off", Duration::from_secs(3 * 86_400)).await;
//!             n + 1
//!         })
//!     }
//! }
//! impl IntoWorkflow for CoolOff {
//!     type Workflow = Self;
//!     fn into_workflow(self) -> Self { self }
//! }
//!
//! let kit = TestEngine::open(Engine::builder().register(CoolOff)).await?;
//! let handle = kit.start(CoolOff, "c-1", 41).await?;
//! kit.run_until_idle().await;
//! assert!(matches!(kit.status("c-1").await?, Status::Sleeping { .. }));
//! kit.advance(Duration::from_secs(3 * 86_400)).await;
//! assert_eq!(handle.result().await?, 42);
//! kit.shutdown().await;
//! # Ok(()) }
//! ```

mod crash;
#[cfg(unix)]
mod process;
mod replay;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{Engine, EngineBuilder};
use crate::error::{Error, Result, StoreError};
use crate::hooks::Hooks;
use crate::manifest::{SiteKind, step_types};
use crate::store::{Batch, Entries, MemoryStore, Store, Tree};
use crate::time::ManualClock;
use crate::workflow::{IntoWorkflow, manifest_of};

pub use self::crash::{CrashFailure, CrashReport, CrashTest, Event};
#[cfg(unix)]
pub use self::process::{CHILD_ENV, ProcessCrashTest};
pub use self::replay::{Divergence, Export, ReplayEnd, ReplayReport, replay, replay_export};
pub use crate::hooks::CrashMoment;

/// Why a test kit operation could not do its job (the workflow under test
/// misbehaving is reported in a [`CrashReport`] or [`ReplayReport`]
/// instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] Error),
    /// A run could not go on: it waits for an event nobody sends, or it
    /// never settles.
    #[error("{run}: {reason}")]
    Stuck {
        /// Which run (the clean run, or a crash run).
        run: String,
        /// What it waits for.
        reason: String,
    },
    /// A history file could not be read or written.
    #[error("history file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A history is not for this workflow, or is of an unknown format.
    #[error("{0}")]
    Format(String),
    /// A child process of [`ProcessCrashTest`] did not do what was asked.
    #[error("child process: {0}")]
    Child(String),
}

/// Why [`TestEngine::mock`] refused a mock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MockError {
    /// The workflow has no `step!` of that name.
    #[error("workflow {workflow:?} has no step {step:?} (its steps: {known})")]
    UnknownStep {
        /// The workflow's name.
        workflow: String,
        /// The step name asked for.
        step: String,
        /// The workflow's step names, comma-separated.
        known: String,
    },
    /// The mock's types are not the step's.
    #[error("step {step:?} returns `{expected}`, the mock is `{got}`")]
    WrongTypes {
        /// The step's name.
        step: String,
        /// The step's value / error shapes.
        expected: String,
        /// The mock's value / error shapes.
        got: String,
    },
    /// The outcome does not encode.
    #[error("the mock of step {step:?} does not encode: {reason}")]
    Encode {
        /// The step's name.
        step: String,
        /// The encoder's complaint.
        reason: String,
    },
}

/// Where a [`TestEngine`]'s clock starts: 2026-01-01T00:00:00Z, the same in
/// every run.
pub const TEST_EPOCH_SECS: u64 = 1_767_225_600;

/// An [`Engine`] on a fresh in-memory store, with a [`ManualClock`] that
/// starts at [`TEST_EPOCH_SECS`]. Every [`Engine`] method is available on it
/// (it dereferences to the engine).
#[derive(Debug)]
pub struct TestEngine {
    engine: Engine,
    clock: ManualClock,
    hooks: Arc<Hooks>,
    /// The in-memory store (`None` on the embedded store).
    store: Option<Arc<MemoryStore>>,
}

/// A [`MemoryStore`] the kit keeps a handle on (to copy it at a crash).
struct Shared(Arc<MemoryStore>);

impl Store for Shared {
    fn get(&self, tree: Tree, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, StoreError> {
        self.0.get(tree, key)
    }
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> std::result::Result<Entries, StoreError> {
        self.0.scan_prefix(tree, prefix)
    }
    fn scan_rev(
        &self,
        tree: Tree,
        before: Option<&[u8]>,
        limit: usize,
    ) -> std::result::Result<Entries, StoreError> {
        self.0.scan_rev(tree, before, limit)
    }
    fn apply(&self, batches: &[Batch]) -> std::result::Result<(), StoreError> {
        self.0.apply(batches)
    }
}

/// The manual clock a kit engine starts with: at [`TEST_EPOCH_SECS`].
fn test_clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(TEST_EPOCH_SECS))
}

impl TestEngine {
    /// Opens `builder` (with its registered workflows and settings) on a
    /// new in-memory store and a manual clock; a store or clock set on the
    /// builder is replaced.
    pub async fn open(builder: EngineBuilder) -> Result<TestEngine> {
        TestEngine::open_with(
            builder,
            Some(Arc::new(MemoryStore::new())),
            test_clock(),
            Arc::new(Hooks::default()),
        )
        .await
    }

    /// Opens `builder` on `store` (the builder's own store, the embedded one
    /// at its path, when `None`), with `clock` and `hooks`.
    async fn open_with(
        builder: EngineBuilder,
        store: Option<Arc<MemoryStore>>,
        clock: ManualClock,
        hooks: Arc<Hooks>,
    ) -> Result<TestEngine> {
        let builder = match &store {
            Some(store) => builder.store(Shared(Arc::clone(store))),
            None => builder,
        };
        let engine = builder
            .clock(clock.clone())
            .hooks(Arc::clone(&hooks))
            .open()
            .await?;
        Ok(TestEngine {
            engine,
            clock,
            hooks,
            store,
        })
    }

    /// Replaces every run of step `step` of `workflow` (in every instance,
    /// every occurrence) by `outcome`: the body does not run, and the
    /// outcome is checkpointed as if it had returned it. The step must be a
    /// `step!` of the workflow and `outcome` of its own `Result<T, E>` type
    /// (checked against the workflow's manifest now, not when it runs).
    ///
    /// ```
    /// # async fn demo(kit: durable_runtime::testing::TestEngine, wf: impl durable_runtime::IntoWorkflow) {
    /// kit.mock(wf, "charge-card", Ok::<String, String>("ch_test".into())).unwrap();
    /// # }
    /// ```
    pub fn mock<I, T, E>(
        &self,
        workflow: I,
        step: &str,
        outcome: std::result::Result<T, E>,
    ) -> std::result::Result<(), MockError>
    where
        I: IntoWorkflow,
        T: Serialize + DeserializeOwned + 'static,
        E: Serialize + DeserializeOwned + 'static,
    {
        let manifest = manifest_of(workflow);
        let Some((_, site)) = manifest
            .site(step)
            .filter(|(_, s)| s.kind == SiteKind::Step)
        else {
            let known: Vec<&str> = manifest
                .sites
                .iter()
                .filter(|s| s.kind == SiteKind::Step)
                .map(|s| s.name.as_str())
                .collect();
            return Err(MockError::UnknownStep {
                workflow: manifest.workflow.clone(),
                step: step.to_string(),
                known: known.join(", "),
            });
        };
        let types = step_types::<T, E>();
        let shapes = |t: &crate::manifest::SiteTypes| {
            format!(
                "Result<{}, {}>",
                t.value.text,
                t.error.as_ref().map_or("?", |e| e.text.as_str())
            )
        };
        if let Some(expected) = &site.types
            && expected.fingerprint() != types.fingerprint()
        {
            return Err(MockError::WrongTypes {
                step: step.to_string(),
                expected: shapes(expected),
                got: shapes(&types),
            });
        }
        let bytes = crate::codec::encode(&outcome).map_err(|reason| MockError::Encode {
            step: step.to_string(),
            reason,
        })?;
        self.hooks.set_mock(step, types.fingerprint(), bytes);
        Ok(())
    }

    /// How many times the real body of step `step` ran in this engine (all
    /// instances, all attempts; mocked runs and replays do not count).
    pub fn body_runs(&self, step: &str) -> u32 {
        self.hooks.runs(step)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine's clock; moving it by hand does not wait for the engine
    /// (use [`advance`](Self::advance) for that).
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Returns once no instance can make progress without the clock moving
    /// or an event being sent: every instance has finished, parked, or is
    /// blocked only in sleeps, waits and retry backoffs that are not due.
    /// A step body that waits for something outside the engine keeps it
    /// from returning until the body finishes.
    pub async fn run_until_idle(&self) {
        loop {
            // Let the instances' tasks run first, then look.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            // A crashed engine (or a replay past its history) does nothing
            // more.
            if self.engine.is_idle().await || self.hooks.stopped() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Exports instance `id`'s recorded history (see [`Export`]), to replay
    /// it against other code with [`replay`].
    pub async fn export(&self, id: &str) -> Result<Export> {
        Export::of(&self.engine, id).await
    }

    /// Runs until idle, moves the clock forward by `by`, then [runs until
    /// idle](Self::run_until_idle) again: every sleep, wait timeout and retry
    /// backoff due by then has fired and its instance gone as far as it can.
    /// The clock jumps: a sleep that starts after the jump counts from the
    /// new time (advance in smaller steps to pass several in turn).
    pub async fn advance(&self, by: Duration) {
        self.run_until_idle().await;
        self.clock.advance(by);
        self.run_until_idle().await;
    }

    /// A process restart: shuts the engine down (see
    /// [`Engine::shutdown`]), moves the clock by `down` (time that passes
    /// while no engine runs: no timer fires in it), and opens `builder` on
    /// the same store with the same clock. Body counts and mocks carry over.
    ///
    /// ```
    /// # async fn demo(kit: durable_runtime::testing::TestEngine, wf: impl durable_runtime::IntoWorkflow) -> durable_runtime::Result<()> {
    /// use std::time::Duration;
    /// use durable_runtime::Engine;
    ///
    /// let kit = kit.restart(Engine::builder().register(wf), Duration::from_secs(3_600)).await?;
    /// assert_eq!(kit.recovery().parked, 1);
    /// # Ok(()) }
    /// ```
    pub async fn restart(self, builder: EngineBuilder, down: Duration) -> Result<TestEngine> {
        let TestEngine {
            engine,
            clock,
            hooks,
            store,
        } = self;
        engine.shutdown().await;
        clock.advance(down);
        TestEngine::open_with(builder, store, clock, hooks).await
    }

    /// Shuts the engine down; see [`Engine::shutdown`].
    pub async fn shutdown(self) {
        self.engine.shutdown().await;
    }
}

impl std::ops::Deref for TestEngine {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}
