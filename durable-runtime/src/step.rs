//! The one operation behind `step!`: replay the checkpoint, or run the body
//! (retrying per policy) and checkpoint its outcome durably before returning.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::context::{Ctx, InFlight, StepScope};
use crate::error::Error;
use crate::future::BoxFuture;
use crate::journal::decode_value;
use crate::metrics::StepOutcome::{self, Failed};
use crate::panic::{CatchUnwind, panic_message};
use crate::records::{At, CheckpointRecord, CheckpointState};
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
        step_at(
            self,
            name,
            None::<&()>,
            false,
            Some(policy),
            None,
            body,
            None,
        )
    }

    /// Like [`step`](Self::step), with a timeout per attempt: an attempt
    /// still running after `timeout` (on the engine's clock) is a failed
    /// attempt, its body's future is dropped, and the step is retried per
    /// the workflow's policy (`policy` overrides it). If the last attempt
    /// times out, the step fails for good with
    /// [`InstanceError::StepTimedOut`](crate::InstanceError::StepTimedOut)
    /// and the instance is failed. `step!(name, timeout = d, body)` is the
    /// same inside a workflow.
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_runtime::Ctx;
    ///
    /// async fn fetch(ctx: &Ctx) -> Result<String, String> {
    ///     ctx.step_timeout("fetch", None, Duration::from_secs(30), || async {
    ///         Ok("page".to_string())
    ///     })
    ///     .await
    /// }
    /// ```
    pub fn step_timeout<'c, T, E, F, Fut>(
        &'c self,
        name: &'static str,
        policy: Option<RetryPolicy>,
        timeout: Duration,
        body: F,
    ) -> BoxFuture<'c, Result<T, E>>
    where
        F: Fn() -> Fut + Send + 'c,
        Fut: Future<Output = Result<T, E>> + Send + 'c,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        step_at(
            self,
            name,
            None::<&()>,
            false,
            policy,
            Some(timeout),
            body,
            None,
        )
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
    step_at(ctx, name, None::<&()>, false, policy, None, body, None)
}

/// What `step!` expands to: [`step`] for a site declared in the manifest,
/// with its phantom (which gives the manifest the site's types), its
/// optional key, retry policy and timeout per attempt.
#[allow(clippy::too_many_arguments)]
pub fn step_site<'c, K, T, E, F, Fut>(
    ctx: &'c Ctx,
    _site: PhantomData<fn() -> (T, E)>,
    name: &'static str,
    key: Option<&K>,
    policy: Option<RetryPolicy>,
    timeout: Option<Duration>,
    body: F,
) -> BoxFuture<'c, Result<T, E>>
where
    K: Serialize + std::fmt::Debug + ?Sized,
    F: Fn() -> Fut + Send + 'c,
    Fut: Future<Output = Result<T, E>> + Send + 'c,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    step_at(ctx, name, key, true, policy, timeout, body, None)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn step_at<'c, K, T, E, F, Fut>(
    ctx: &'c Ctx,
    name: &'static str,
    key: Option<&K>,
    declared: bool,
    policy: Option<RetryPolicy>,
    timeout: Option<Duration>,
    body: F,
    undo: Option<crate::context::Undo<T>>,
) -> BoxFuture<'c, Result<T, E>>
where
    K: Serialize + std::fmt::Debug + ?Sized,
    F: Fn() -> Fut + Send + 'c,
    Fut: Future<Output = Result<T, E>> + Send + 'c,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    // A step called inside another step's body is a plain call of its body:
    // the outer step's checkpoint covers it (and a replay skips both).
    if StepScope::inside() {
        return Box::pin(async move { body().await });
    }
    let at = match key {
        None => At::Occurrence(ctx.next_occurrence(name)),
        Some(key) => match crate::codec::encode(key) {
            Ok(bytes) => At::Key(bytes, format!("{key:?}")),
            Err(reason) => {
                let error = Error::Replay(crate::error::ReplayError::Encode {
                    instance: ctx.id.clone(),
                    what: format!("the key of step {name:?}"),
                    reason,
                });
                return Box::pin(async move { ctx.abort(error).await });
            }
        },
    };
    if let At::Key(bytes, text) = &at
        && !ctx.claim_key(name, bytes)
    {
        let error = Error::Instance(crate::error::InstanceError::DuplicateKey {
            instance: ctx.id.clone(),
            step: name.to_string(),
            key: text.clone(),
        });
        return Box::pin(async move { ctx.abort(error).await });
    }
    let site = Site {
        name,
        at,
        declared,
        seq: ctx.next_seq(),
        timeout,
    };
    Box::pin(async move {
        let at = site.at.clone();
        match run(ctx, site, policy, body).await {
            Ok((outcome, seq)) => {
                // A step that succeeded (now or in a replay) registers its
                // compensation, with the value it returned.
                let registered = match (undo, &outcome) {
                    (Some(undo), Ok(value)) => {
                        ctx.register_compensation(name, at, seq, policy, value, undo)
                    }
                    _ => Ok(()),
                };
                if let Err(error) = registered {
                    ctx.abort(error).await
                }
                outcome
            }
            Err(error) => ctx.abort(error).await,
        }
    })
}

/// One step site as it is recorded.
struct Site {
    name: &'static str,
    at: At,
    declared: bool,
    seq: u64,
    /// The timeout of each attempt.
    timeout: Option<Duration>,
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
    site: Site,
    policy: Option<RetryPolicy>,
    body: F,
) -> Result<(Result<T, E>, u64), Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + DeserializeOwned + 'static,
    E: Serialize + DeserializeOwned + std::fmt::Debug + 'static,
{
    let name = site.name;
    let occurrence = site.at.occurrence();
    let types = crate::manifest::step_types::<T, E>();
    let (attempts, started_at_ms, seq) = match ctx.take_checkpoint_at(name, &site.at) {
        Some(record) => match record.state {
            CheckpointState::Done {
                outcome,
                type_name,
                fingerprint,
                ..
            } => {
                tracing::trace!(
                    durable.instance_id = %ctx.id,
                    durable.step = name,
                    durable.occurrence = occurrence,
                    durable.replayed = true,
                    "step replayed from its checkpoint"
                );
                #[cfg(feature = "testing")]
                if let Some(hooks) = &ctx.services.hooks {
                    hooks.on_replay(name, &site.at);
                }
                let decode_error = |reason: String| {
                    Error::Replay(crate::error::ReplayError::CheckpointDecode {
                        instance: ctx.id.clone(),
                        step: name.to_string(),
                        occurrence,
                        stored_type: type_name.clone(),
                        expected_type: std::any::type_name::<Result<T, E>>(),
                        reason,
                    })
                };
                // Decoded only into the types it was written as.
                if fingerprint != types.fingerprint() {
                    return Err(decode_error(format!(
                        "it was written with other types (fingerprint {fingerprint:016x}); the code now reads `{}` / `{}`",
                        types.value,
                        types.error.as_ref().map_or("", |e| e.text.as_str())
                    )));
                }
                crate::metrics::step(ctx.workflow, name, StepOutcome::Replayed);
                return decode_value::<Result<T, E>>(&outcome)
                    .map(|outcome| (outcome, record.seq))
                    .map_err(decode_error);
            }
            CheckpointState::Panicked { message, .. } => {
                return Err(panicked(ctx, name, occurrence, message));
            }
            CheckpointState::TooLarge { size, limit, .. } => {
                return Err(too_large(
                    ctx,
                    name,
                    &site.at,
                    size as usize,
                    limit as usize,
                ));
            }
            CheckpointState::Expired { timeout_ms, .. } => {
                return Err(timed_out(ctx, name, occurrence, timeout_ms));
            }
            CheckpointState::Retrying { .. } => (record.attempts, record.started_at_ms, record.seq),
            other => return Err(ctx.diverged(name, occurrence, &other, "a step")),
        },
        None => (0, ctx.now_ms(), site.seq),
    };
    let site = Site { seq, ..site };
    let span = step_span(ctx, name, occurrence);
    run_attempts(ctx, &site, policy, body, (attempts, started_at_ms), &types)
        .instrument(span)
        .await
        .map(|outcome| (outcome, seq))
}

/// Runs attempts of a step that has no final outcome yet, until one is
/// final, and checkpoints it.
async fn run_attempts<T, E, F, Fut>(
    ctx: &Ctx,
    site: &Site,
    policy: Option<RetryPolicy>,
    body: F,
    (mut attempts, started_at_ms): (u32, u64),
    types: &crate::manifest::SiteTypes,
) -> Result<Result<T, E>, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned + std::fmt::Debug,
{
    let (name, occurrence) = (site.name, site.at.occurrence());
    // While the instance is paused, no new step starts.
    ctx.signals.unpaused().await;
    // A running step keeps the instance from parking.
    let _busy = ctx.signals.busy();
    let policy = policy.unwrap_or(ctx.policy);
    let key = ctx.step_key(name, &site.at);
    let record = |attempts, state| CheckpointRecord {
        name: name.to_string(),
        occurrence,
        key: site.at.key(),
        declared: site.declared,
        seq: site.seq,
        attempts,
        started_at_ms,
        state,
    };
    loop {
        // While the store is failing, no new attempt starts: its outcome
        // could not be checkpointed.
        if let Some(failure) = ctx.services.backend.failure() {
            return Err(failure.into());
        }
        // After a cancel, no new attempt starts.
        if ctx.signals.is_cancelled() {
            return Err(Error::Instance(crate::error::InstanceError::Cancelled {
                instance: ctx.id.clone(),
            }));
        }
        // Where leases can run out (PostgreSQL), no attempt starts unless
        // this process surely still holds the instance.
        if let Some(held) = ctx.services.backend.hold(&ctx.id, ctx.lease) {
            held.await?;
        }
        attempts += 1;
        crate::crash::point("step.before_body");
        let scope = Arc::new(StepScope {
            key: key.clone(),
            permanent: AtomicBool::new(false),
        });
        let timer = crate::metrics::Timer::start();
        let attempt = {
            let _running = ctx.signals.running(InFlight {
                name,
                occurrence,
                key: site.at.key().map(|(_, text)| text),
                seq: site.seq,
                attempt: attempts,
                started_at_ms: ctx.now_ms(),
            });
            tracing::debug!(durable.attempt = attempts, "step attempt started");
            match mocked::<T, E>(ctx, name, types) {
                // A mocked outcome is final: a mocked error is not retried.
                Some(Ok(outcome)) => {
                    scope.permanent.store(true, Ordering::Relaxed);
                    Ok(outcome)
                }
                Some(Err(reason)) => {
                    return Err(Error::Replay(crate::error::ReplayError::CheckpointDecode {
                        instance: ctx.id.clone(),
                        step: name.to_string(),
                        occurrence,
                        stored_type: "a mock".into(),
                        expected_type: std::any::type_name::<Result<T, E>>(),
                        reason,
                    }));
                }
                None => {
                    #[cfg(feature = "testing")]
                    if let Some(hooks) = &ctx.services.hooks {
                        hooks.before_body(name, &site.at).await;
                    }
                    let run = StepScope::enter(Arc::clone(&scope), CatchUnwind::new(&body));
                    match site.timeout {
                        None => run.await,
                        Some(timeout) => match within(ctx, timeout, run).await {
                            Some(ran) => ran,
                            None => {
                                // Timed out: the body's future was dropped.
                                let timeout_ms = crate::time::duration_ms(timeout);
                                if attempts >= policy.attempts() {
                                    tracing::warn!(
                                        durable.attempt = attempts,
                                        durable.timeout_ms = timeout_ms,
                                        "step timed out on its last attempt"
                                    );
                                    let state = CheckpointState::Expired {
                                        finished_at_ms: ctx.now_ms(),
                                        timeout_ms,
                                    };
                                    write(ctx, record(attempts, state)).await?;
                                    crate::metrics::step(ctx.workflow, name, Failed);
                                    return Err(timed_out(ctx, name, occurrence, timeout_ms));
                                }
                                Err(Box::new(TimedOutAttempt(timeout_ms))
                                    as Box<dyn std::any::Any + Send>)
                            }
                        },
                    }
                }
            }
        };
        crate::crash::point("step.after_body");
        crate::metrics::step_body(ctx.workflow, name, timer);
        let last = attempts >= policy.attempts();
        let retry_error = match attempt {
            Ok(outcome) => {
                let permanent = scope.permanent.load(Ordering::Relaxed);
                match &outcome {
                    Err(e) if !permanent && !last => format!("{e:?}"),
                    _ => {
                        let state = match done_state(ctx, site, &outcome, types.fingerprint()) {
                            Ok(state) => state,
                            Err(Error::Replay(crate::error::ReplayError::ValueTooLarge {
                                size,
                                limit,
                                ..
                            })) => {
                                // Recorded as the step's failure: the body
                                // never runs again for this instance.
                                let state = CheckpointState::TooLarge {
                                    finished_at_ms: ctx.now_ms(),
                                    size: size as u64,
                                    limit: limit as u64,
                                };
                                write(ctx, record(attempts, state)).await?;
                                crate::metrics::step(ctx.workflow, name, Failed);
                                return Err(too_large(ctx, name, &site.at, size, limit));
                            }
                            Err(e) => return Err(e),
                        };
                        write(ctx, record(attempts, state)).await?;
                        crate::metrics::step(ctx.workflow, name, StepOutcome::of(outcome.is_ok()));
                        return Ok(outcome);
                    }
                }
            }
            Err(panic) if panic.is::<TimedOutAttempt>() => {
                let ms = panic.downcast_ref::<TimedOutAttempt>().map_or(0, |t| t.0);
                format!("timed out after {ms} ms")
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
                    crate::metrics::step(ctx.workflow, name, Failed);
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
        crate::metrics::step_retry(ctx.workflow, name);
        let clock = &ctx.services.clock;
        let until = clock
            .now_ms()
            .saturating_add(crate::time::duration_ms(delay));
        let _backoff = ctx.signals.backoff(until);
        clock.sleep_until(until).await;
    }
}

/// Stands for an attempt that ran past its timeout where a panic payload
/// goes (never raised as a panic).
struct TimedOutAttempt(u64);

/// Runs `run` until it resolves or `timeout` passes on the engine's clock
/// (`None`; `run` is dropped then).
async fn within<F: Future>(ctx: &Ctx, timeout: Duration, run: F) -> Option<F::Output> {
    let clock = &ctx.services.clock;
    let until = clock
        .now_ms()
        .saturating_add(crate::time::duration_ms(timeout));
    let mut run = std::pin::pin!(run);
    let mut expiry = clock.sleep_until(until);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = run.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(out));
        }
        expiry.as_mut().poll(cx).map(|()| None)
    })
    .await
}

fn timed_out(ctx: &Ctx, name: &str, occurrence: u32, timeout_ms: u64) -> Error {
    Error::Instance(crate::error::InstanceError::StepTimedOut {
        instance: ctx.id.clone(),
        step: name.to_string(),
        occurrence,
        timeout_ms,
    })
}

fn too_large(ctx: &Ctx, name: &str, at: &At, size: usize, limit: usize) -> Error {
    Error::Replay(crate::error::ReplayError::ValueTooLarge {
        instance: ctx.id.clone(),
        what: format!("the outcome of step {name:?} ({at})"),
        size,
        limit,
    })
}

fn done_state<T: Serialize, E: Serialize + std::fmt::Debug>(
    ctx: &Ctx,
    site: &Site,
    outcome: &Result<T, E>,
    fingerprint: u64,
) -> Result<CheckpointState, Error> {
    let bytes = ctx.services.encode_value_as(
        &ctx.id,
        || format!("the outcome of step {:?} ({})", site.name, site.at),
        outcome,
    )?;
    Ok(CheckpointState::Done {
        finished_at_ms: ctx.now_ms(),
        ok: outcome.is_ok(),
        type_name: std::any::type_name::<Result<T, E>>().to_string(),
        fingerprint,
        error_text: outcome.as_ref().err().map(|e| format!("{e:?}")),
        outcome: bytes,
    })
}

pub(crate) async fn write(ctx: &Ctx, record: CheckpointRecord) -> Result<(), Error> {
    let progress = !matches!(record.state, CheckpointState::Retrying { .. });
    // A finished step is progress: the count of resumes without progress
    // (kept against crash loops) starts again, in the same atomic batch.
    let reset = progress && ctx.recoveries() > 0;
    #[cfg(feature = "testing")]
    if let Some(hooks) = &ctx.services.hooks {
        use crate::hooks::CrashMoment::BeforeCheckpoint;
        hooks.around_checkpoint(&record, BeforeCheckpoint).await;
    }
    #[cfg(feature = "testing")]
    let written = record.clone();
    ctx.checkpoint(record, reset).await?;
    if reset {
        ctx.take_recoveries();
    }
    crate::crash::point("step.after_write");
    #[cfg(feature = "testing")]
    if let Some(hooks) = &ctx.services.hooks {
        use crate::hooks::CrashMoment::AfterCheckpoint;
        hooks.around_checkpoint(&written, AfterCheckpoint).await;
    }
    Ok(())
}

/// The outcome the test kit mocks for step `name`, if any (feature
/// `testing`; always `None` without it).
#[allow(unused_variables)]
fn mocked<T: DeserializeOwned, E: DeserializeOwned>(
    ctx: &Ctx,
    name: &str,
    types: &crate::manifest::SiteTypes,
) -> Option<Result<Result<T, E>, String>> {
    #[cfg(feature = "testing")]
    if let Some(hooks) = &ctx.services.hooks {
        return hooks.mock::<T, E>(name, types.fingerprint());
    }
    None
}

fn panicked(ctx: &Ctx, name: &str, occurrence: u32, message: String) -> Error {
    Error::Instance(crate::error::InstanceError::StepPanicked {
        instance: ctx.id.clone(),
        step: name.to_string(),
        occurrence,
        message,
    })
}
