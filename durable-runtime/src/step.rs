//! The one operation behind `step!`: replay the checkpoint, or run the body
//! (retrying per policy) and checkpoint its outcome durably before returning.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::context::{Ctx, StepScope};
use crate::error::Error;
use crate::records::{
    CheckpointRecord, CheckpointState, instance_key, now_ms, occurrence_key, recoveries_value,
};
use crate::retry::{RetryPolicy, jitter_random};
use crate::store::{Batch, Tree};
use crate::workflow::BoxFuture;

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
    let (mut attempts, started_at_ms) = match ctx.take_checkpoint(name, occurrence) {
        Some(record) => match record.state {
            CheckpointState::Done {
                outcome, type_name, ..
            } => {
                return codec::decode::<Result<T, E>>(&outcome).map_err(|e| {
                    Error::CheckpointDecode {
                        instance: ctx.id.clone(),
                        step: name.to_string(),
                        occurrence,
                        stored_type: type_name,
                        expected_type: std::any::type_name::<Result<T, E>>().to_string(),
                        reason: e.to_string(),
                    }
                });
            }
            CheckpointState::Panicked { message, .. } => {
                return Err(panicked(ctx, name, occurrence, message));
            }
            CheckpointState::Retrying { .. } => (record.attempts, record.started_at_ms),
            other => return Err(ctx.diverged(name, occurrence, &other, "a step")),
        },
        None => (0, now_ms()),
    };
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
        if let Some(failure) = ctx.core.committer.failure() {
            return Err(failure.into());
        }
        // After a cancel, no new attempt starts.
        if ctx.signals.is_cancelled() {
            return Err(Error::Cancelled {
                instance: ctx.id.clone(),
            });
        }
        attempts += 1;
        crate::crash::point("step.before_body");
        let scope = Arc::new(StepScope {
            key: key.clone(),
            permanent: AtomicBool::new(false),
        });
        let attempt = StepScope::enter(Arc::clone(&scope), CatchUnwind::new(&body)).await;
        crate::crash::point("step.after_body");
        let last = attempts >= policy.attempts();
        let retry_error = match attempt {
            Ok(outcome) => {
                let permanent = scope.permanent.load(Ordering::Relaxed);
                match &outcome {
                    Err(e) if !permanent && !last => format!("{e:?}"),
                    _ => {
                        let state = done_state(ctx, name, occurrence, &outcome)?;
                        write(ctx, name, occurrence, record(attempts, state)).await?;
                        return Ok(outcome);
                    }
                }
            }
            Err(panic) => {
                let message = panic_message(&*panic);
                if last {
                    let state = CheckpointState::Panicked {
                        finished_at_ms: now_ms(),
                        message: message.clone(),
                    };
                    write(ctx, name, occurrence, record(attempts, state)).await?;
                    return Err(panicked(ctx, name, occurrence, message));
                }
                format!("panicked: {message}")
            }
        };
        let state = CheckpointState::Retrying {
            last_error: retry_error,
        };
        write(ctx, name, occurrence, record(attempts, state)).await?;
        tokio::time::sleep(policy.delay(attempts, jitter_random())).await;
    }
}

fn done_state<T: Serialize, E: Serialize + std::fmt::Debug>(
    ctx: &Ctx,
    name: &str,
    occurrence: u32,
    outcome: &Result<T, E>,
) -> Result<CheckpointState, Error> {
    let bytes = codec::encode(outcome).map_err(|reason| Error::Encode {
        instance: ctx.id.clone(),
        what: format!("the outcome of step {name:?} (occurrence {occurrence})"),
        reason,
    })?;
    let limit = ctx.core.config.max_value_size;
    if bytes.len() > limit {
        return Err(Error::ValueTooLarge {
            instance: ctx.id.clone(),
            what: format!("the outcome of step {name:?} (occurrence {occurrence})"),
            size: bytes.len(),
            limit,
        });
    }
    Ok(CheckpointState::Done {
        finished_at_ms: now_ms(),
        ok: outcome.is_ok(),
        type_name: std::any::type_name::<Result<T, E>>().to_string(),
        error_text: outcome.as_ref().err().map(|e| format!("{e:?}")),
        outcome: bytes,
    })
}

async fn write(
    ctx: &Ctx,
    name: &str,
    occurrence: u32,
    record: CheckpointRecord,
) -> Result<(), Error> {
    let progress = !matches!(record.state, CheckpointState::Retrying { .. });
    let mut batch = checkpoint_batch(ctx, name, occurrence, &record)?;
    // A finished step is progress: the count of resumes without progress
    // (kept against crash loops) starts again, in the same atomic batch.
    let reset = progress && ctx.recoveries() > 0;
    if reset {
        batch.put(Tree::Active, instance_key(&ctx.id), recoveries_value(0));
    }
    ctx.core.committer.commit(batch).await?;
    if reset {
        ctx.take_recoveries();
    }
    crate::crash::point("step.after_write");
    Ok(())
}

/// A batch that stores `record` as the checkpoint of (name, occurrence).
pub(crate) fn checkpoint_batch(
    ctx: &Ctx,
    name: &str,
    occurrence: u32,
    record: &CheckpointRecord,
) -> Result<Batch, Error> {
    let value = codec::encode(record).map_err(|reason| Error::Encode {
        instance: ctx.id.clone(),
        what: "a checkpoint record".into(),
        reason,
    })?;
    let mut batch = Batch::new();
    batch.put(
        Tree::Checkpoints,
        occurrence_key(&ctx.id, name, occurrence),
        value,
    );
    Ok(batch)
}

fn panicked(ctx: &Ctx, name: &str, occurrence: u32, message: String) -> Error {
    Error::StepPanicked {
        instance: ctx.id.clone(),
        step: name.to_string(),
        occurrence,
        message,
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// One attempt of a body: calling it and polling its future, with any panic
/// caught and turned into `Err`.
pub(crate) struct CatchUnwind<Fut> {
    fut: Option<Pin<Box<Fut>>>,
    panic: Option<Box<dyn Any + Send>>,
}

impl<Fut: Future> CatchUnwind<Fut> {
    pub(crate) fn new<F: Fn() -> Fut>(body: &F) -> Self {
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(fut) => CatchUnwind {
                fut: Some(Box::pin(fut)),
                panic: None,
            },
            Err(panic) => CatchUnwind {
                fut: None,
                panic: Some(panic),
            },
        }
    }
}

impl<Fut: Future> Future for CatchUnwind<Fut> {
    type Output = Result<Fut::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(Err(this
                .panic
                .take()
                .unwrap_or_else(|| Box::new("polled after completion"))));
        };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                this.fut = None;
                Poll::Ready(Ok(v))
            }
            Err(panic) => {
                this.fut = None;
                Poll::Ready(Err(panic))
            }
        }
    }
}
