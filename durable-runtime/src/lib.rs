//! The runtime of [`durable`](https://docs.rs/durable): the engine, step
//! checkpointing, retries, history and storage. Depend on `durable`, which
//! re-exports everything here.
//!
//! # Module map
//!
//! Leaves first; each module imports only modules above it in this list, so
//! the graph has no cycle.
//!
//! | module | what it owns |
//! | --- | --- |
//! | `error` | typed errors |
//! | `codec` | the only file that names bincode: the versioned envelope |
//! | `records` | stored record types and their keys |
//! | `manifest` | manifests: sites, serde shapes, fingerprints, compatibility checks, snapshots |
//! | `time` | the [`Clock`](time::Clock) seam: system clock, manual clock |
//! | `future`, `panic`, `crash`, `outcome`, `ids`, `retry` | small leaves |
//! | [`store`] | the KV device seam: [`Store`](store::Store), sled + write-ahead log, memory |
//! | `committer` | group commit: one durable apply for many batches |
//! | `journal` | every record encoded and decoded here; typed reads and writes |
//! | `backend` | the instance-level storage seam (async, fenced by epoch): create-if-absent, claims, commits, events, cancel, listing, wake-up hints; `embedded` over the journal, `postgres` (feature `postgres`) over a shared database |
//! | `services` | what a running instance may use: backend, clock, value limit |
//! | `context` | [`Ctx`]: an instance's id, counters, signals |
//! | `step`, `wait`, `values` | `impl Ctx`: the operations behind `step!`, `sleep!`, `wait_for!`; checkpointed `now`, `random`, `uuid` |
//! | `published` | `impl Ctx`: `set_event`, `write_stream`, published state and streams checkpointed like a step |
//! | `saga` | `impl Ctx`: compensations registered by `step!(.., compensate = ..)` and run in reverse when an instance fails or is cancelled |
//! | `workflow` | [`Workflow`], [`IntoWorkflow`] |
//! | `inspect`, `listing` | [`Status`], [`History`]; [`ListFilter`], [`Page`] |
//! | `json` | (feature `json`) stored values as JSON, decoded and encoded by their manifest shape |
//! | `metrics` | (feature `metrics`, a no-op without it) every metric name and description, and the recording functions the rest calls |
//! | `testing` | (feature `testing`) `TestEngine`: in-memory store, manual clock, `advance`, `run_until_idle` |
//! | `engine` | [`Engine`] and its parts (its own module map): builder, start, registry, instances, handle, driver, ending, scheduler (parking, claim loop), events, recovery, queries, control, children, saga, queues, schedules, debounce |
//! | `cron`, `schedule`, `queue` | (leaves, listed here by topic) cron expressions; [`Schedule`], [`Tick`], [`Debounce`] (the engine's `schedules` and `debounce` modules fire them); [`Queue`], [`EnqueueOptions`] (the engine's `queues` dispatches) |
//! | `child` | `impl Ctx`: [`Ctx::start_child`], [`Child`], [`Ctx::run_children`]: child workflows, started through the engine's `Starter` seam in `services` |
//!
//! # Tracing
//!
//! The runtime emits [`tracing`](https://docs.rs/tracing) spans and events;
//! install any subscriber to see them (`cargo run --example tracing`).
//! Field names follow OpenTelemetry's style.
//!
//! | name | kind, level | fields |
//! | --- | --- | --- |
//! | `durable.run` | span, info: one run of one instance | `durable.workflow`, `durable.instance_id`, `durable.resume_count`, `durable.begin` |
//! | `durable.step` | span, info: a step occurrence's attempts | `durable.instance_id`, `durable.step`, `durable.occurrence` |
//! | step attempt started | event, debug | `durable.attempt` |
//! | step attempt failed; retrying | event, info | `durable.attempt`, `durable.error`, `durable.retry_in_ms` |
//! | step replayed | event, **trace** (replays never log above trace) | `durable.step`, `durable.occurrence`, `durable.replayed` |
//! | instance started / resumed / completed / cancelled | event, info | `durable.instance_id` |
//! | instance parked / woken | event, debug | `durable.waits`, `durable.wake_at_ms` |
//! | event sent / received, wait timed out | event, info or debug | `durable.event`, `durable.occurrence` |
//! | instance stopped by an error | event, warn | `durable.error`, `durable.status` |
//! | `durable.commit` | span, debug: one group commit | `durable.batches`, `durable.bytes`, `durable.apply_us` |
#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod backend;
mod child;
mod codec;
mod committer;
mod context;
mod crash;
pub mod cron;
mod engine;
mod error;
mod future;
#[cfg(feature = "testing")]
mod hooks;
mod ids;
mod inspect;
mod journal;
#[cfg(feature = "json")]
pub mod json;
mod listing;
pub mod manifest;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod outcome;
mod panic;
mod published;
mod queue;
mod records;
mod retry;
mod saga;
mod schedule;
mod services;
mod step;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
mod values;
mod wait;
mod workflow;

pub use child::{Child, ChildId, ChildOptions};
pub use context::{Ctx, permanent};
#[cfg(feature = "crash-points")]
pub use crash::CRASH_POINTS;
#[cfg(feature = "json")]
pub use engine::admin::{STATUS_KINDS, parse_status, status_json, status_name};
pub use engine::{
    DEFAULT_MAX_RECOVERIES, DEFAULT_MAX_VALUE_SIZE, Engine, EngineBuilder, Handle, Incompatibility,
    RecoveryReport, StartOptions,
};
pub use error::{Cause, Error, InstanceError, ReplayError, Result, StoreError, UsageError};
pub use future::BoxFuture;
pub use ids::MAX_ID_LEN;
pub use inspect::{
    History, RunningStep, SetAsideStep, Status, StepOutcome, StepRecord, Transition, TransitionKind,
};
pub use listing::{Cursor, InstanceSummary, InvalidCursor, ListFilter, Page, StatusKind};
pub use queue::{EnqueueOptions, Queue, QueueInfo};
pub use retry::RetryPolicy;
pub use schedule::{DEFAULT_GRACE, Debounce, Missed, Schedule, ScheduleInfo, Tick};
pub use workflow::{IntoWorkflow, Workflow, manifest_of};

/// Hooks for the benchmark (feature `hooks`). Not public API.
#[cfg(feature = "hooks")]
#[doc(hidden)]
pub mod __bench {
    /// A park table holding `n` instances (ids `prefix-0`…) each waiting on
    /// one event, as the engine holds them; drop it to free it. Lets the
    /// benchmark measure the table's own heap.
    pub fn park_table(prefix: &str, n: usize) -> Box<dyn std::any::Any> {
        crate::backend::park::bench_table(prefix, n)
    }
}

/// What `#[durable]` expands to. Not public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::context::Ctx;
    pub use crate::future::BoxFuture;
    pub use crate::manifest::{
        SiteDecl, SiteKind, SiteTypes, TypesOfStep, TypesOfWait, TypesUnknown, sleep_site_types,
        step_probe, wait_probe,
    };
    pub use crate::retry::RetryPolicy;
    pub use crate::saga::step_site_compensated;
    pub use crate::step::{step, step_site};
    pub use crate::wait::{sleep, sleep_until, wait_for_site, wait_for_timeout_site};
    pub use crate::workflow::{Workflow, WorkflowMarker, body_fn};

    /// What `patched!(name)` expands to: see [`Ctx::patched`].
    pub fn patched(ctx: &Ctx, name: &str) -> bool {
        ctx.patched(name)
    }
}
