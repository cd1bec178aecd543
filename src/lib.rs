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
//!
//! # Changing a workflow safely
//!
//! Instances are in flight when you deploy: parked in a three-day
//! `wait_for!`, sleeping, or interrupted by the deploy itself. `#[durable]`
//! gives each workflow a **manifest**: its sites (`step!`, `sleep!`,
//! `wait_for!`, `patched!`) in source order, with the serde shape of each
//! step's value and error and of each wait's payload (field names and types,
//! enum variants; not the Rust path, so moving a type to another module
//! changes nothing), and the shapes of the input and output. Each instance
//! stores the hash of the manifest it started with; each checkpoint and each
//! event stores the fingerprint of the type it was written with.
//!
//! - **Refused before running, never misread.** Before an instance runs any
//!   body (at start, resume, wake-up or recovery), what it recorded is checked
//!   against the registered manifest. If a recorded site is gone, changed kind
//!   or type, or a new site comes before one it already passed, no body runs:
//!   the instance is set aside as `Status::Incompatible` with the reason
//!   (`step `assign-team` is gone`, `step `price` was written as
//!   `{cents: u64, tax_cents: u64}`, the code now reads
//!   `{tax_cents: u64, cents: u64}``), nothing stored changes, and the build
//!   that started it can still finish it. A checkpoint or event is decoded
//!   only when its fingerprint matches the type asked for.
//! - **Events are checked when sent.** `send_event` refuses a payload whose
//!   shape is not the one the workflow's `wait_for!` of that name reads,
//!   whether or not the instance waits yet, naming both shapes.
//! - **Compatible changes need nothing**: appending steps after everything
//!   in-flight instances passed, adding a step in a branch they took already,
//!   changing code inside step bodies.
//! - **A planned change inside one version**: `if patched!("add-fraud-check")
//!   { step!("fraud-check", ..)?; }` is `true` for instances started on code
//!   that has the patch and `false` for older ones, which skip the block.
//!   Once no older instance is unfinished, remove the `patched!` and keep the
//!   body.
//! - **A breaking change gets a new version**:
//!   `#[durable(name = "onboard", version = 2)]` beside the old
//!   `#[durable(name = "onboard")]` (version 1), both registered. In-flight
//!   instances finish on the version they started on; new ones start on the
//!   version you pass to `start`. An instance whose version is not registered
//!   is left untouched and reported in `engine.recovery().skipped`.
//! - **The deploy gate**: `engine.compatibility()` lists, for the opened
//!   store, every unfinished instance the registered code cannot run and why,
//!   and every site whose type could not be traced.
//! - **At test time**: keep the manifests in your repository and compare them
//!   in a test:
//!
//!   ```ignore
//!   #[test]
//!   fn workflow_manifests() {
//!       use durable::{manifest::assert_snapshot, manifest_of};
//!       assert_snapshot("tests/manifests.txt", &[manifest_of(onboard), manifest_of(onboard_v2)]);
//!   }
//!   ```
//!
//!   `DURABLE_MANIFESTS=update cargo test` records new manifests and
//!   compatible changes; a change that would strand in-flight instances of a
//!   version fails even then, naming the site and the fix (a new version or a
//!   patch); `DURABLE_MANIFESTS=force` records it when no such instance can be
//!   in flight.
//!
//! The team's loop: change the workflow, run `cargo test`; if the snapshot
//! test says the change strands instances, bump the version (keep the old one
//! registered until its instances finish) or wrap the new steps in
//! `patched!`; before a deploy, `engine.compatibility()` against the
//! production store must be empty.
//!
//! Limits, stated plainly: a type whose `Deserialize` cannot be traced
//! (`deserialize_any`: `serde_json::Value`, untagged enums, flattened
//! structs; or one that validates what it reads, such as a UUID parsed from a
//! string) is fingerprinted by its Rust type name, so moving or renaming it
//! counts as a change, and `compatibility()` lists it. Steps run through
//! `ctx.step(..)` from helper fns are not in the manifest: their checkpoints
//! are checked by fingerprint when read, not before the run. Stores written
//! by format 1 are refused at open (`StoreError::FormatTooOld`, naming both
//! versions); finish their instances with the build that wrote them.
//!
//! # What must stay deterministic
//!
//! Code between steps runs again on every replay and must compute the same
//! thing each time; everything else belongs in a step (or in the input).
//!
//! | non-deterministic | instead |
//! |---|---|
//! | `SystemTime::now()`, `Instant::now()` | `ctx.now().await` (checkpointed), or read the time inside a step |
//! | `rand::random()`, `thread_rng()` | `ctx.random().await` (checkpointed), or draw inside a step |
//! | `Uuid::new_v4()` | `ctx.uuid().await` (checkpointed), or make it inside a step |
//! | `std::env::var`, config files read between steps | put the values in the input, or read them inside a step |
//! | `tokio::time::sleep` | `sleep!("name", duration)` (durable) |
//! | iterating a `HashMap`/`HashSet` and issuing steps | `step!("grant", key = perm.clone(), ..)`: the checkpoint is keyed by (name, key), not by position; or iterate a `BTreeMap`/`BTreeSet`/sorted `Vec` |
//!
//! `#[durable]` warns (a compiler warning at the offending token) for these
//! calls outside step bodies and for unkeyed steps in a loop over a
//! collection declared as a `HashMap`/`HashSet`; `#[durable(allow =
//! "nondeterminism")]` silences it for one fn (the benchmark uses it to time
//! its steps). The scan is by tokens: it cannot see through helper fns or
//! type aliases.
//!
//! - **Keyed steps**: `step!("grant", key = perm.clone(), grant(&perm).await)`;
//!   the key is any `Serialize + Debug` value; using one key twice in one
//!   instance fails the instance with `InstanceError::DuplicateKey`.
//! - **A step inside a step's body** (`ctx.step(..)` inside `step!`) is a
//!   plain call of its body: the outer step's checkpoint covers both, and a
//!   replay skips both.
//! - **An outcome over `max_value_size`** is recorded as the step's failure
//!   (`StepOutcome::TooLarge`, `ReplayError::ValueTooLarge`, no retry): the body
//!   never runs again and the instance is `Failed`, naming the limit.
//! - **`History::steps`** lists sites in the order they started (a start
//!   sequence is stored), also for sites started together by `join!`.
//! - **`engine.resume` on a `Failed` instance** returns `InstanceError::Failed` (a
//!   step failed for good and that is its recorded outcome); it never returns
//!   `Ok` doing nothing. Start a new instance instead.
//!
//! # Testing workflows
//!
//! With the feature `testing`, `durable::testing::TestEngine` runs an
//! engine on an in-memory store with a manual clock: `run_until_idle()`
//! returns once nothing can happen until the clock moves or an event is
//! sent, and `advance(d)` moves the clock and runs until idle again, so a
//! three-day `sleep!`, a 72-hour wait timeout or an hour of retry backoff is
//! tested in microseconds, deterministically.
//! `TestEngine::crash_at_every_step(workflow, input).run()` crashes the
//! engine before and after every step's checkpoint in turn and checks that
//! each resumed run ends with the clean run's output, no body running more
//! than once more (`ProcessCrashTest` does it with `SIGKILL`ed child
//! processes); `kit.export(id)` writes an instance's history to a JSON file
//! and `durable::testing::replay(workflow, path)` replays it against the
//! current code, naming the first site that diverges. For operators, every instance
//! run and step attempt is a `tracing` span (see the runtime's crate docs),
//! `Engine::list` pages through instances by status, workflow and time, and
//! with the feature `metrics` the runtime records counters and histograms
//! through the `metrics` facade (names and meanings in `durable::metrics`
//! and the README's "Metrics" section).
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

/// A planned change inside one version of a workflow:
/// `if patched!("add-fraud-check") { step!("fraud-check", ..)?; }`.
///
/// Evaluates to `true` for instances started on code that has this patch
/// (every new instance) and `false` for instances started before it
/// existed, which skip the block. It is decided by the manifest the
/// instance started with, so it never changes for an instance and needs no
/// checkpoint. Sites written directly inside the `if patched!(..) { .. }`
/// block may be added before sites that in-flight instances already passed
/// (the compatibility check knows older instances skip them); without the
/// patch such an insertion sets those instances aside. Once no instance
/// started before the patch is left unfinished, the `patched!` can go (keep
/// the block's body).
///
/// Only valid inside a `#[durable]` async fn:
///
/// ```compile_fail
/// use durable::prelude::*;
/// fn not_a_workflow() -> bool {
///     patched!("change")
/// }
/// ```
#[macro_export]
macro_rules! patched {
    (@__durable_expanded $($expanded:tt)*) => { $($expanded)* };
    ($($args:tt)*) => {
        ::core::compile_error!("`patched!` can only be used inside a `#[durable]` async fn")
    };
}

#[cfg(feature = "admin")]
pub mod admin;

#[cfg(feature = "cli")]
pub mod cli;

/// Everything a workflow author needs: `use durable::prelude::*;`.
pub mod prelude {
    pub use crate::{patched, sleep, sleep_until, step, wait_for};
    pub use durable_macros::durable;
    pub use durable_runtime::{
        Ctx, Engine, Error, InstanceError, ReplayError, RetryPolicy, UsageError, permanent,
    };
}
