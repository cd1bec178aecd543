//! Durable execution for async Rust: workflows whose steps are checkpointed
//! in an embedded store, so that a crash, a deploy or a `kill -9` resumes a
//! workflow at its first unfinished step instead of running it again.
//!
//! A job queue knows one bit per job: pending or done. When a job is five side
//! effects and the third one crashes, the queue runs the job again from the
//! top and the card is charged twice. A `#[durable]` workflow knows which of
//! its steps have happened and what each returned.
//!
//! ```
//! use durable::prelude::*;
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! static CHARGES: AtomicU32 = AtomicU32::new(0);
//!
//! #[durable]
//! async fn checkout(ctx: &Ctx, cents: u64) -> Result<String, String> {
//!     let charge = step!("charge", async {
//!         CHARGES.fetch_add(1, Ordering::SeqCst);
//!         Ok::<_, String>(format!("charged {cents} with key {}", ctx.idempotency_key()))
//!     }.await)?;
//!     step!("ship", async { Ok::<_, String>(()) }.await)?;
//!     Ok(charge)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), durable::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::builder().path(dir.path()).register(checkout).open().await?;
//! let receipt = engine.run(checkout, "order-1", 1250).await?;
//! assert!(receipt.unwrap().starts_with("charged 1250"));
//! engine.shutdown().await; // or a crash: every finished step is on disk
//!
//! // Reopen: the same id attaches to the finished instance; nothing runs again.
//! let engine = Engine::builder().path(dir.path()).register(checkout).open().await?;
//! engine.run(checkout, "order-1", 1250).await?.unwrap();
//! assert_eq!(CHARGES.load(Ordering::SeqCst), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//! - **Exactly-once progress.** When `step!` returns, its outcome is written,
//!   flushed and `fdatasync`ed; no later run of the instance runs that body
//!   again, and every run gets the same value back.
//! - **At-least-once step bodies.** A body runs again only if the process
//!   died while it ran (before its checkpoint was durable) or it failed and is
//!   retried. Give outside systems [`Ctx::idempotency_key`].
//! - **Ids are idempotency keys.** Starting an existing id attaches to it;
//!   with another workflow or input it is [`Error::IdConflict`].
//! - **Nothing is lost.** Every started instance finishes or is resumed by
//!   the next [`EngineBuilder::open`].
//! - **Deterministic replay.** Code between steps must be deterministic; a
//!   replay that does not reach a recorded step is reported
//!   ([`Error::Nondeterminism`]).
//! - **Clear failure.** Typed errors that name the instance, step and cause;
//!   a blocked instance is left intact and resumable.
#![deny(missing_docs)]

pub use durable_macros::durable;
pub use durable_runtime::*;

#[doc(hidden)]
pub use durable_runtime::__private;

/// Runs one checkpointed step of a `#[durable]` workflow.
///
/// `step!(name, body)` or `step!(name, retry = policy, body)`: `name` is a
/// string literal, unique within the workflow (a step in a loop is one name
/// with numbered occurrences); `body` is an expression, usually ending in
/// `.await`, that evaluates to `Result<T, E>` with serde types (and
/// `E: Debug`). The body runs, is retried on `Err` per the policy, and its
/// outcome is checkpointed durably before `step!` evaluates to it. On a
/// replay the checkpointed outcome is returned and the body does not run.
///
/// The body may borrow surrounding variables but not move or mutate them:
/// it is called once per attempt, and a mutation would be skipped on replay.
///
/// Only valid inside a `#[durable]` async fn, which rewrites each use:
///
/// ```compile_fail
/// use durable::prelude::*;
/// async fn not_a_workflow() -> Result<u32, String> {
///     step!("one", async { Ok(1) }.await)
/// }
/// ```
#[macro_export]
macro_rules! step {
    (@__durable_expanded $($expanded:tt)*) => { $($expanded)* };
    ($($args:tt)*) => {
        ::core::compile_error!("`step!` can only be used inside a `#[durable]` async fn")
    };
}

/// Everything a workflow author needs: `use durable::prelude::*;`.
pub mod prelude {
    pub use crate::step;
    pub use durable_macros::durable;
    pub use durable_runtime::{Ctx, Engine, Error, RetryPolicy, permanent};
}
