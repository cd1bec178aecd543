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
//!   with another workflow or input it is [`UsageError::IdConflict`].
//! - **Nothing is lost.** Every started instance finishes or is resumed by
//!   the next [`EngineBuilder::open`].
//! - **Deterministic replay.** Code between steps must be deterministic; a
//!   replay that does not reach a recorded step is reported
//!   ([`ReplayError::Nondeterminism`]).
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
/// string literal, unique within the workflow among its steps, sleeps and
/// waits (a step in a loop is one name with numbered occurrences); `body`
/// is an expression, usually ending in `.await`, that evaluates to
/// `Result<T, E>` with serde types (and `E: Debug`). The body runs, is retried on `Err` per the policy, and its
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

/// Sleeps durably inside a `#[durable]` workflow: `sleep!(name, duration)`.
///
/// `name` is a string literal, unique within the workflow among its steps,
/// sleeps and waits (a sleep in a loop is one name with numbered
/// occurrences); `duration` is a [`std::time::Duration`]. The first time the
/// sleep is reached, its absolute deadline (now + `duration`) is
/// checkpointed; after a restart only the remainder is waited (never more
/// than `duration`, whatever the clock did), and once the deadline has
/// passed the sleep returns at once. On a replay `duration` is evaluated
/// again but the checkpointed deadline holds. [`Ctx::sleep`] does the same
/// outside the macro, e.g. in a helper fn.
///
/// While it sleeps (longer than about a second), the instance is parked: it
/// holds no task and no future in memory (only a small entry in the
/// engine's timer table, and its records in the store). When the deadline
/// comes, in this process or after a restart in the next one that opens
/// the store, the engine replays the instance from its checkpoints and it
/// goes on after the sleep.
///
/// ```ignore
/// use std::time::Duration;
///
/// step!("send-trial-email", mailer::trial(&user).await)?;
/// sleep!("trial", Duration::from_secs(14 * 86400));
/// step!("send-reminder", mailer::reminder(&user).await)?;
/// ```
///
/// Evaluates to `()`. Like [`step!`], it is a future instead as a whole
/// argument of `join!` / `try_join!` or as the future of a `select!` branch.
///
/// Only valid inside a `#[durable]` async fn, and not inside a step's body:
///
/// ```compile_fail
/// use durable::prelude::*;
/// async fn not_a_workflow() {
///     sleep!("nap", std::time::Duration::from_secs(1));
/// }
/// ```
#[macro_export]
macro_rules! sleep {
    (@__durable_expanded $($expanded:tt)*) => { $($expanded)* };
    ($($args:tt)*) => {
        ::core::compile_error!("`sleep!` can only be used inside a `#[durable]` async fn")
    };
}

/// Sleeps durably until a wall-clock time: `sleep_until!(name, time)`.
///
/// As [`sleep!`], with a [`std::time::SystemTime`] for the deadline instead of
/// a duration: any expression, e.g. `SystemTime::now() + d` or a time read
/// from the input. The deadline is checkpointed the first time the sleep is
/// reached (a replay keeps that one, even though `SystemTime::now()` has
/// moved on); a time already past returns at once. While it sleeps the
/// instance is parked and holds no task or future.
///
/// ```compile_fail
/// use durable::prelude::*;
/// async fn not_a_workflow() {
///     sleep_until!("launch", std::time::SystemTime::now());
/// }
/// ```
#[macro_export]
macro_rules! sleep_until {
    (@__durable_expanded $($expanded:tt)*) => { $($expanded)* };
    ($($args:tt)*) => {
        ::core::compile_error!("`sleep_until!` can only be used inside a `#[durable]` async fn")
    };
}

/// Waits durably for an event sent to the instance:
/// `wait_for!(name)` or `wait_for!(name, timeout = duration)`.
///
/// `name` is the name of the event, which [`Engine::send_event`] sends to
/// the instance: a string literal unique within the workflow among its
/// steps, sleeps and waits (a wait in a loop is one name with numbered
/// occurrences: the n-th takes the n-th event of that name).
///
/// - `wait_for!(name)` evaluates to the event's payload, of a type inferred
///   from its use: `let approval: Approval = wait_for!("approval");`.
/// - `wait_for!(name, timeout = d)` evaluates to an `Option` of it: `None`
///   when no event came within `d` of the wait first being reached (that
///   deadline is checkpointed, as a [`sleep!`]'s is).
///
/// Payload types are serde types (`DeserializeOwned + Send + 'static`); the
/// sender must send the same type ([`UsageError::EventTypeMismatch`] otherwise).
/// The payload is checkpointed once received, so a replay gets the same
/// payload back. Events sent before the wait is reached are kept, not
/// dropped: the wait then returns at once.
/// While it waits the instance is parked: it holds no task and no future,
/// and the event (or the timeout) resumes it, also after a restart.
/// [`Ctx::wait_for`] and [`Ctx::wait_for_timeout`] do the same outside the
/// macro.
///
/// ```ignore
/// use std::time::Duration;
///
/// let approval: Option<Approval> =
///     wait_for!("manager-approval", timeout = Duration::from_secs(3 * 86400));
/// match approval {
///     Some(approval) => step!("apply", apply(&approval).await)?,
///     None => step!("escalate", escalate(&request).await)?,
/// }
/// ```
///
/// As a whole argument of `join!` / `try_join!` or the future of a `select!`
/// branch it is a future, like [`step!`]. A `select!` racing a wait against a
/// sleep should be `biased;`: on a replay both may be ready at once, and only
/// a fixed polling order replays the same winner. Only valid inside a
/// `#[durable]` async fn, and not inside a step's body:
///
/// ```compile_fail
/// use durable::prelude::*;
/// async fn not_a_workflow() {
///     let payload: u32 = wait_for!("event");
/// }
/// ```
#[macro_export]
macro_rules! wait_for {
    (@__durable_expanded $($expanded:tt)*) => { $($expanded)* };
    ($($args:tt)*) => {
        ::core::compile_error!("`wait_for!` can only be used inside a `#[durable]` async fn")
    };
}

/// Everything a workflow author needs: `use durable::prelude::*;`.
pub mod prelude {
    pub use crate::{sleep, sleep_until, step, wait_for};
    pub use durable_macros::durable;
    pub use durable_runtime::{
        Ctx, Engine, Error, InstanceError, ReplayError, RetryPolicy, UsageError, permanent,
    };
}
