//! The runtime of [`durable`](https://docs.rs/durable): the engine, step
//! checkpointing, retries, history and storage. Depend on `durable`, which
//! re-exports everything here.
#![deny(missing_docs)]

mod codec;
mod committer;
mod context;
mod crash;
mod engine;
mod error;
mod history;
pub mod manifest;
mod park;
mod records;
mod retry;
mod step;
pub mod store;
mod wait;
mod workflow;

pub use context::{Ctx, permanent};
#[doc(hidden)]
pub use crash::CRASH_POINTS;
pub use engine::{
    DEFAULT_MAX_VALUE_SIZE, Engine, EngineBuilder, Handle, Incompatibility, MAX_ID_LEN,
    RecoveryReport,
};
pub use error::{Error, Result, StoreError};
pub use history::{History, Status, StepOutcome, StepRecord, Transition, TransitionKind};
pub use retry::RetryPolicy;
pub use workflow::{BoxFuture, IntoWorkflow, Workflow};

/// Hooks for the benchmark. Not public API.
#[doc(hidden)]
pub mod __bench {
    /// A park table holding `n` instances (ids `prefix-0`…) each waiting on
    /// one event, as the engine holds them; drop it to free it. Lets the
    /// benchmark measure the table's own heap.
    pub fn park_table(prefix: &str, n: usize) -> Box<dyn std::any::Any> {
        let mut table = crate::park::ParkTable::default();
        let cond = crate::records::WaitCond {
            name: "go".into(),
            occurrence: 0,
            deadline_ms: None,
            event_type: Some("u64".into()),
        };
        for i in 0..n {
            table.insert(&format!("{prefix}-{i}"), std::slice::from_ref(&cond), |d| d);
        }
        Box::new(table)
    }
}

/// What `#[durable]` expands to. Not public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::context::Ctx;
    pub use crate::manifest::{
        SiteDecl, SiteKind, SiteTypes, TypesOfStep, TypesOfWait, TypesUnknown, sleep_site_types,
        step_probe, wait_probe,
    };
    pub use crate::retry::RetryPolicy;
    pub use crate::step::step;
    pub use crate::step::step_site;

    /// What `patched!(name)` expands to: see [`Ctx::patched`].
    pub fn patched(ctx: &Ctx, name: &str) -> bool {
        ctx.patched(name)
    }
    pub use crate::wait::{sleep, sleep_until};
    pub use crate::wait::{wait_for_site, wait_for_timeout_site};
    pub use crate::workflow::{BoxFuture, Workflow, WorkflowMarker, body_fn};
}
