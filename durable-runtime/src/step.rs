//! The one operation behind `step!`: replay the checkpoint, or run the body
//! (retrying per policy) and checkpoint its outcome durably before returning.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::context::{Ctx, InFlight, StepScope};
use crate::error::Error;
use crate::future::BoxFuture;
use crate::journal::decode_value;
use crate::panic::{CatchUnwind, panic_message};
use crate::records::{CheckpointRecord, CheckpointState};
use crate::retry::{RetryPolicy, jitter_random};

impl Ctx {
    /// Runs one step outside the `step!` macro, for helper fns that receive a
    /// `&Ctx`. Same semantics as `step!(name, body())`, with the workflow's
    /// retry policy; the name is not checked at compile time.
    ///
    /// ```
    /// use durable_runtime::Ctx;
    ///
    /// async fn notify(ctx: &Ctx, user: &str) -> Result<(), String> {
    ///     ctx.step("notify", || async { println!("hello {user}"); Ok(()) }).await
    /// }
    /// ```
    pub fn step<'c, T, E, F, Fut>(
        &'c self,
        name: &'static str,
        body: F,
    ) -> BoxFuture<'c, Result<T, E>>
    where
        F: Fn() -> Fut + Send + 'c,
        Fut: Future<Output = Result<T, E>> + Send + 'c,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        step(self, name, None, body)
    }

    /// Like [`step`](Self::step), with its own retry policy.
    pub fn step_with<'c, T, E, F, Fut>(
        &'c self,
        name: &'static str,
        policy: RetryPolicy,
        body: F,
    ) -> BoxFuture<'c, Result<T, E>>
    where
        F: Fn() -> Fut + Send + 'c,
        Fut: Future<Output = Result<T, E>> + Send + 'c,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        step(self, name, Some(policy), body)
    }
}

/// Runs step `name` of the instance behind `ctx`; see [`Ctx::step`].
///
/// The occurrence number is assigned when this is called, not when the
/// future is first polled. If the engine cannot checkpoint (store failure,
/// a checkpoint that no longer decodes, a value over the limit), the future
/// never resolves: the engine stops the instance and reports the error.
pub fn step<'c, T, E, F, Fut>(
    ctx: &'c Ctx,
    name: &'static str,
    policy: Option<RetryPolicy>,
    body: F,
) -> BoxFuture<'c, Result<T, E>>
where
    F: Fn() -> Fut + Send + 'c,
    Fut: Future<Output = Result<T, E>> + Send + 'c,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let occurrence = ctx.next_occurrence(name);
    Box::pin(async move {
        match run(ctx, name, occurrence, policy, body).await {
            Ok(outcome) => outcome,
            Err(error) => ctx.abort(error).await,
        }
    })
}

/// The span of one step occurrence (its attempts run inside it).
fn step_span(ctx: &Ctx, name: &str, occurrence: u32) -> tracing::Span {
    tracing::info_span!(
        "durable.step",
        durable.instance_id = %ctx.id,
        durable.step = name,
        durable.occurrence = occurrence,
    )
}

async fn run<T, E, F, Fut>(
    ctx: &Ctx,
    name: &'static str,
    occurrence: u32,
    policy: Option<RetryPolicy>,
    body: F,
) -> Result<Result<T, E>, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned + std::fmt::Debug,
{
    let (attempts, started_at_ms) = match ctx.take_checkpoint(name, occurrence) {
        Some(record) => match record.state {
            CheckpointState::Done {
                outcome, type_name, ..
            } => {
                tracing::trace!(
                    durable.instance_id = %ctx.id,
                    durable.step = name,
                    durable.occurrence = occurrence,
                    durable.replayed = true,
                    "step replayed from its checkpoint"
                );
                return decode_value::<Result<T, E>>(&outcome).map_err(|reason| {
                    Error::Replay(crate::error::ReplayError::CheckpointDecode {
                        instance: ctx.id.clone(),
                        step: name.to_string(),
                        occurrence,
                        stored_type: type_name,
                        expected_type: std::any::type_name::<Result<T, E>>(),
                        reason,
                    })
                });
            }
            CheckpointState::Panicked { message, .. } => {
                return Err(panicked(ctx, name, occurrence, message));
            }
            CheckpointState::Retrying { .. } => (record.attempts, record.started_at_ms),
            other => return Err(ctx.diverged(name, occurrence, &other, "a step")),
        },
        None => (0, ctx.now_ms()),
    };
    run_attempts(ctx, name, occurrence, policy, body, attempts, started_at_ms)
        .instrument(step_span(ctx, name, occurrence))
        .await
}

/// Runs attempts of a step that has no final outcome yet, until one is
/// final, and checkpoints it.
async fn run_attempts<T, E, F, Fut>(
    ctx: &Ctx,
    name: &'static str,
    occurrence: u32,
    policy: Option<RetryPolicy>,
    body: F,
    mut attempts: u32,
    started_at_ms: u64,
) -> Result<Result<T, E>, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned + std::fmt::Debug,
{
    // A running step keeps the instance from parking.
    let _busy = ctx.signals.busy();
    let policy = policy.unwrap_or(ctx.policy);
    let key = ctx.step_key(name, occurrence);
    let record = |attempts, state| CheckpointRecord {
        name: name.to_string(),
        occurrence,
        attempts,
        started_at_ms,
        state,
    };
    loop {
        // While the store is failing, no new attempt starts: its outcome
        // could not be checkpointed.
        if let Some(failure) = ctx.services.journal.failure() {
            return Err(failure.into());
        }
        // After a cancel, no new attempt starts.
        if ctx.signals.is_cancelled() {
            return Err(Error::Instance(crate::error::InstanceError::Cancelled {
                instance: ctx.id.clone(),
            }));
        }
        attempts += 1;
        crate::crash::point("step.before_body");
        let scope = Arc::new(StepScope {
            key: key.clone(),
            permanent: AtomicBool::new(false),
        });
        let attempt = {
            let _running = ctx.signals.running(InFlight {
                name,
                occurrence,
                attempt: attempts,
                started_at_ms: ctx.now_ms(),
            });
            tracing::debug!(durable.attempt = attempts, "step attempt started");
            StepScope::enter(Arc::clone(&scope), CatchUnwind::new(&body)).await
        };
        crate::crash::point("step.after_body");
        let last = attempts >= policy.attempts();
        let retry_error = match attempt {
            Ok(outcome) => {
                let permanent = scope.permanent.load(Ordering::Relaxed);
                match &outcome {
                    Err(e) if !permanent && !last => format!("{e:?}"),
                    _ => {
                        let state = done_state(ctx, name, occurrence, &outcome)?;
                        write(ctx, record(attempts, state)).await?;
                        return Ok(outcome);
                    }
                }
            }
            Err(panic) => {
                let message = panic_message(&*panic);
                if last {
                    tracing::warn!(durable.attempt = attempts, durable.panic = %message, "step panicked on its last attempt");
                    let state = CheckpointState::Panicked {
                        finished_at_ms: ctx.now_ms(),
                        message: message.clone(),
                    };
                    write(ctx, record(attempts, state)).await?;
                    return Err(panicked(ctx, name, occurrence, message));
                }
                format!("panicked: {message}")
            }
        };
        let delay = policy.delay(attempts, jitter_random());
        tracing::info!(
            durable.attempt = attempts,
            durable.error = %retry_error,
            durable.retry_in_ms = crate::time::duration_ms(delay),
            "step attempt failed; retrying"
        );
        let state = CheckpointState::Retrying {
            last_error: retry_error,
        };
        write(ctx, record(attempts, state)).await?;
        let clock = &ctx.services.clock;
        clock
            .sleep_until(
                clock
                    .now_ms()
                    .saturating_add(crate::time::duration_ms(delay)),
            )
            .await;
    }
}

fn done_state<T: Serialize, E: Serialize + std::fmt::Debug>(
    ctx: &Ctx,
    name: &str,
    occurrence: u32,
    outcome: &Result<T, E>,
) -> Result<CheckpointState, Error> {
    let bytes = ctx.services.journal.encode_value(
        &ctx.id,
        &format!("the outcome of step {name:?} (occurrence {occurrence})"),
        outcome,
    )?;
    Ok(CheckpointState::Done {
        finished_at_ms: ctx.now_ms(),
        ok: outcome.is_ok(),
        type_name: std::any::type_name::<Result<T, E>>().to_string(),
        error_text: outcome.as_ref().err().map(|e| format!("{e:?}")),
        outcome: bytes,
    })
}

async fn write(ctx: &Ctx, record: CheckpointRecord) -> Result<(), Error> {
    let progress = !matches!(record.state, CheckpointState::Retrying { .. });
    // A finished step is progress: the count of resumes without progress
    // (kept against crash loops) starts again, in the same atomic batch.
    let reset = progress && ctx.recoveries() > 0;
    ctx.services
        .journal
        .checkpoint(&ctx.id, &record, reset)
        .await?;
    if reset {
        ctx.take_recoveries();
    }
    crate::crash::point("step.after_write");
    Ok(())
}

fn panicked(ctx: &Ctx, name: &str, occurrence: u32, message: String) -> Error {
    Error::Instance(crate::error::InstanceError::StepPanicked {
        instance: ctx.id.clone(),
        step: name.to_string(),
        occurrence,
        message,
    })
}
