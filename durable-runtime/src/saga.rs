//! Saga compensation: `step!(name, body, compensate = |value| async move { .. })`.
//!
//! A step with a compensation that succeeds registers the compensation
//! with its value (on its first run, and again in every replay, decoded
//! from its checkpoint). When the instance fails for good (the workflow
//! returns `Err`, a step panics or times out on its last attempt, its
//! deadline passes) or is cancelled, the engine runs the registered
//! compensations in reverse order of their steps (the order the steps
//! were created in, which a replay reproduces), before it records the end.
//!
//! Each compensation is checkpointed like a step, under the name
//! `"<step>::compensate"` and the step's own occurrence (or key): a crash
//! in the middle of compensating resumes compensating, and a finished
//! compensation never runs again. A compensation is retried per its step's
//! retry policy (`permanent(e)` stops the retries); one that fails for good
//! stops the chain: the instance ends failed with
//! [`InstanceError::CompensationFailed`], and its history says so.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{Compensation, Ctx, StepScope, Undo};
use crate::error::{Error, InstanceError, ReplayError};
use crate::future::BoxFuture;
use crate::panic::{CatchUnwind, panic_message};
use crate::records::{At, CheckpointRecord, CheckpointState};
use crate::retry::{RetryPolicy, jitter_random};

/// The name a compensation of step `step` is checkpointed under.
pub(crate) fn compensation_name(step: &str) -> String {
    format!("{step}::compensate")
}

/// What `step!(name, .., body, compensate = f)` expands to: a declared
/// step (see [`step_site`](crate::step::step_site)) whose value, when it
/// succeeds, is handed to `compensate` if the instance later fails or is
/// cancelled.
///
/// `compensate` gets the step's `Ok` value (decoded from its checkpoint in
/// a replay) and returns a future of `Result<(), CE>`; it must own what it
/// uses (`move`), since it may run after the workflow's own future is gone.
#[allow(clippy::too_many_arguments)]
pub fn step_site_compensated<'c, K, T, E, F, Fut, C, CFut, CE>(
    ctx: &'c Ctx,
    _site: PhantomData<fn() -> (T, E)>,
    name: &'static str,
    key: Option<&K>,
    policy: Option<RetryPolicy>,
    timeout: Option<Duration>,
    body: F,
    compensate: C,
) -> BoxFuture<'c, Result<T, E>>
where
    K: Serialize + std::fmt::Debug + ?Sized,
    F: Fn() -> Fut + Send + 'c,
    Fut: Future<Output = Result<T, E>> + Send + 'c,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static,
    C: Fn(T) -> CFut + Send + Sync + 'static,
    CFut: Future<Output = Result<(), CE>> + Send + 'static,
    CE: std::fmt::Debug + 'static,
{
    let compensate = Arc::new(compensate);
    let undo: Undo<T> = Box::new(move |value: T| {
        let fut = compensate(value);
        Box::pin(async move { fut.await.map_err(|e| format!("{e:?}")) })
    });
    crate::step::step_at(ctx, name, key, true, policy, timeout, body, Some(undo))
}

/// Whether an instance that stopped with `error` is compensated: it failed
/// for good (not blocked, not lost to another worker, not a store failure).
pub(crate) fn compensates(error: &Error) -> bool {
    matches!(
        error,
        Error::Instance(
            InstanceError::StepPanicked { .. }
                | InstanceError::StepTimedOut { .. }
                | InstanceError::Cancelled { .. }
                | InstanceError::DeadlinePassed { .. }
                | InstanceError::DuplicateKey { .. }
        ) | Error::Replay(ReplayError::ValueTooLarge { .. })
    )
}

impl Ctx {
    /// Registers the compensation of step `step` at `at`, which returned
    /// `value`.
    pub(crate) fn register_compensation<T>(
        &self,
        step: &'static str,
        at: At,
        seq: u64,
        policy: Option<RetryPolicy>,
        value: &T,
        undo: Undo<T>,
    ) -> Result<(), Error>
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let bytes = crate::codec::encode(value).map_err(|reason| {
            Error::Replay(ReplayError::Encode {
                instance: self.id.clone(),
                what: format!("the value of step {step:?} for its compensation"),
                reason,
            })
        })?;
        let run = Box::new(move || {
            let value = crate::codec::decode::<T>(&bytes).map_err(|e| e.to_string())?;
            Ok(undo(value))
        });
        self.compensations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Compensation {
                step,
                at,
                seq,
                policy,
                run,
            });
        Ok(())
    }

    /// Whether a step registered a compensation in this run.
    pub(crate) fn has_compensations(&self) -> bool {
        !self
            .compensations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Runs the registered compensations in reverse order of their steps,
    /// each checkpointed; returns how many ran (or replayed). The first
    /// that fails for good stops the chain: its error names it, and
    /// `cause` (why the instance is compensated) goes with it.
    pub(crate) async fn compensate(&self, cause: &str) -> Result<u32, Error> {
        let mut chain =
            std::mem::take(&mut *self.compensations.lock().unwrap_or_else(|e| e.into_inner()));
        chain.sort_by_key(|c| std::cmp::Reverse(c.seq));
        let mut count = 0;
        for compensation in &chain {
            self.compensate_one(compensation, cause).await?;
            count += 1;
        }
        Ok(count)
    }

    async fn compensate_one(&self, c: &Compensation, cause: &str) -> Result<(), Error> {
        let name = compensation_name(c.step);
        let occurrence = c.at.occurrence();
        let failed = |error: String| {
            Error::Instance(InstanceError::CompensationFailed {
                instance: self.id.clone(),
                step: c.step.to_string(),
                at: c.at.to_string(),
                error,
                cause: cause.into(),
            })
        };
        let (mut attempts, started_at_ms, seq) = match self.take_checkpoint_at(&name, &c.at) {
            None => (0, self.now_ms(), self.next_seq()),
            Some(record) => match record.state {
                CheckpointState::Done { ok: true, .. } => return Ok(()),
                CheckpointState::Done { error_text, .. } => {
                    return Err(failed(error_text.unwrap_or_default()));
                }
                CheckpointState::Retrying { .. } => {
                    (record.attempts, record.started_at_ms, record.seq)
                }
                other => return Err(self.diverged(&name, occurrence, &other, "a compensation")),
            },
        };
        let policy = c.policy.unwrap_or(self.policy);
        let record = |attempts, state| CheckpointRecord {
            name: name.clone(),
            occurrence,
            key: c.at.key(),
            declared: false,
            seq,
            attempts,
            started_at_ms,
            state,
        };
        let _busy = self.signals.busy();
        loop {
            if let Some(failure) = self.services.backend.failure() {
                return Err(failure.into());
            }
            if let Some(held) = self.services.backend.hold(&self.id, self.lease) {
                held.await?;
            }
            attempts += 1;
            crate::crash::point("compensate.before_body");
            let scope = Arc::new(StepScope {
                key: self.step_key(&name, &c.at),
                permanent: AtomicBool::new(false),
            });
            let attempt = CatchUnwind::new(&|| {
                let started = (c.run)();
                async move {
                    match started {
                        Ok(fut) => fut.await.map_err(|e| (e, false)),
                        // The step's value no longer decodes: no retry helps.
                        Err(reason) => {
                            Err((format!("the step's value does not decode: {reason}"), true))
                        }
                    }
                }
            });
            let outcome = match StepScope::enter(Arc::clone(&scope), attempt).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err((e, hopeless))) => {
                    Err((e, hopeless || scope.permanent.load(Ordering::Relaxed)))
                }
                Err(panic) => Err((format!("panicked: {}", panic_message(&*panic)), false)),
            };
            let last = attempts >= policy.attempts();
            match outcome {
                Ok(()) => {
                    let state = done(self, Ok(()));
                    crate::step::write(self, record(attempts, state?)).await?;
                    tracing::info!(durable.instance_id = %self.id, durable.step = c.step, "step compensated");
                    return Ok(());
                }
                Err((error, permanent)) if permanent || last => {
                    let state = done(self, Err(error.clone()));
                    crate::step::write(self, record(attempts, state?)).await?;
                    tracing::warn!(durable.instance_id = %self.id, durable.step = c.step, durable.error = %error, "compensation failed");
                    return Err(failed(error));
                }
                Err((error, _)) => {
                    let delay = policy.delay(attempts, jitter_random());
                    let state = CheckpointState::Retrying { last_error: error };
                    crate::step::write(self, record(attempts, state)).await?;
                    let clock = &self.services.clock;
                    let until = clock
                        .now_ms()
                        .saturating_add(crate::time::duration_ms(delay));
                    let _backoff = self.signals.backoff(until);
                    clock.sleep_until(until).await;
                }
            }
        }
    }
}

/// The final checkpoint state of a compensation with `outcome`.
fn done(ctx: &Ctx, outcome: Result<(), String>) -> Result<CheckpointState, Error> {
    let types = crate::manifest::step_types::<(), String>();
    let bytes = ctx
        .services
        .encode_value(&ctx.id, "the outcome of a compensation", &outcome)?;
    Ok(CheckpointState::Done {
        finished_at_ms: ctx.now_ms(),
        ok: outcome.is_ok(),
        type_name: std::any::type_name::<Result<(), String>>().to_string(),
        fingerprint: types.fingerprint(),
        error_text: outcome.err(),
        outcome: bytes,
    })
}
