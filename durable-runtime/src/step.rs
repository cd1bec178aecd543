//! The one operation behind `step!`: replay the checkpoint, or run the body
//! (retrying per policy) and checkpoint its outcome durably before returning.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
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
    CheckpointRecord, CheckpointState, instance_key, keyed_key, now_ms, occurrence_key,
    recoveries_value,
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
    step_at(ctx, name, None::<&()>, false, policy, body)
}

/// What `step!` expands to: [`step`] for a site declared in the manifest,
/// with its phantom (which gives the manifest the site's types) and its
/// optional key.
pub fn step_site<'c, K, T, E, F, Fut>(
    ctx: &'c Ctx,
    _site: PhantomData<fn() -> (T, E)>,
    name: &'static str,
    key: Option<&K>,
    policy: Option<RetryPolicy>,
    body: F,
) -> BoxFuture<'c, Result<T, E>>
where
    K: Serialize + std::fmt::Debug + ?Sized,
    F: Fn() -> Fut + Send + 'c,
    Fut: Future<Output = Result<T, E>> + Send + 'c,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    step_at(ctx, name, key, true, policy, body)
}

fn step_at<'c, K, T, E, F, Fut>(
    ctx: &'c Ctx,
    name: &'static str,
    key: Option<&K>,
    declared: bool,
    policy: Option<RetryPolicy>,
    body: F,
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
        Some(key) => match codec::encode(key) {
            Ok(bytes) => At::Key(bytes, format!("{key:?}")),
            Err(reason) => {
                let error = Error::Encode {
                    instance: ctx.id.clone(),
                    what: format!("the key of step {name:?}"),
                    reason,
                };
                return Box::pin(async move { ctx.abort(error).await });
            }
        },
    };
    if let At::Key(bytes, text) = &at
        && !ctx.claim_key(name, bytes)
    {
        let error = Error::DuplicateKey {
            instance: ctx.id.clone(),
            step: name.to_string(),
            key: text.clone(),
        };
        return Box::pin(async move { ctx.abort(error).await });
    }
    let seq = ctx.next_seq();
    Box::pin(async move {
        match run(ctx, name, at, declared, seq, policy, body).await {
            Ok(outcome) => outcome,
            Err(error) => ctx.abort(error).await,
        }
    })
}

/// How a step occurrence is identified within its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum At {
    /// The n-th call of the name in this instance.
    Occurrence(u32),
    /// A keyed step (`step!(name, key = k, ..)`): the key's encoding and text.
    Key(Vec<u8>, String),
}

impl At {
    /// The occurrence number stored in the record (0 for a keyed step).
    pub(crate) fn occurrence(&self) -> u32 {
        match self {
            At::Occurrence(n) => *n,
            At::Key(..) => 0,
        }
    }

    /// The key stored in the record.
    pub(crate) fn key(&self) -> Option<(Vec<u8>, String)> {
        match self {
            At::Occurrence(_) => None,
            At::Key(bytes, text) => Some((bytes.clone(), text.clone())),
        }
    }

    /// The record's key in `Checkpoints`.
    pub(crate) fn storage_key(&self, id: &str, name: &str) -> Vec<u8> {
        match self {
            At::Occurrence(n) => occurrence_key(id, name, *n),
            At::Key(bytes, _) => keyed_key(id, name, bytes),
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Occurrence(n) => write!(f, "occurrence {n}"),
            At::Key(_, text) => write!(f, "key {text}"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<T, E, F, Fut>(
    ctx: &Ctx,
    name: &'static str,
    at: At,
    declared: bool,
    seq: u64,
    policy: Option<RetryPolicy>,
    body: F,
) -> Result<Result<T, E>, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + DeserializeOwned + 'static,
    E: Serialize + DeserializeOwned + std::fmt::Debug + 'static,
{
    let occurrence = at.occurrence();
    let types = crate::manifest::step_types::<T, E>();
    let (mut attempts, started_at_ms, seq) = match ctx.take_checkpoint_at(name, &at) {
        Some(record) => match record.state {
            CheckpointState::Done {
                outcome,
                type_name,
                fingerprint,
                ..
            } => {
                let decode_error = |reason: String| Error::CheckpointDecode {
                    instance: ctx.id.clone(),
                    step: name.to_string(),
                    occurrence,
                    stored_type: type_name.clone(),
                    expected_type: types.value.text.clone(),
                    reason,
                };
                // Decoded only into the type it was written as.
                if fingerprint != types.fingerprint() {
                    return Err(decode_error(format!(
                        "it was written with other types (fingerprint {fingerprint:016x}); the code now reads `{}` / `{}`",
                        types.value,
                        types.error.as_ref().map_or("", |e| e.text.as_str())
                    )));
                }
                return codec::decode::<Result<T, E>>(&outcome)
                    .map_err(|e| decode_error(e.to_string()));
            }
            CheckpointState::Panicked { message, .. } => {
                return Err(panicked(ctx, name, occurrence, message));
            }
            CheckpointState::TooLarge { size, limit, .. } => {
                return Err(too_large(ctx, name, &at, size as usize, limit as usize));
            }
            CheckpointState::Retrying { .. } => (record.attempts, record.started_at_ms, record.seq),
            other => return Err(ctx.diverged(name, occurrence, &other, "a step")),
        },
        None => (0, now_ms(), seq),
    };
    // A running step keeps the instance from parking.
    let _busy = ctx.signals.busy();
    let policy = policy.unwrap_or(ctx.policy);
    let key = ctx.step_key(name, &at);
    let storage_key = at.storage_key(&ctx.id, name);
    let record = |attempts, state| CheckpointRecord {
        name: name.to_string(),
        occurrence,
        key: at.key(),
        declared,
        seq,
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
                        let state = match done_state(ctx, name, &at, &outcome, types.fingerprint())
                        {
                            Ok(state) => state,
                            Err(Error::ValueTooLarge { size, limit, .. }) => {
                                // Recorded as the step's failure: the body
                                // never runs again for this instance.
                                let state = CheckpointState::TooLarge {
                                    finished_at_ms: now_ms(),
                                    size: size as u64,
                                    limit: limit as u64,
                                };
                                write(ctx, &storage_key, record(attempts, state)).await?;
                                return Err(too_large(ctx, name, &at, size, limit));
                            }
                            Err(e) => return Err(e),
                        };
                        write(ctx, &storage_key, record(attempts, state)).await?;
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
                    write(ctx, &storage_key, record(attempts, state)).await?;
                    return Err(panicked(ctx, name, occurrence, message));
                }
                format!("panicked: {message}")
            }
        };
        let state = CheckpointState::Retrying {
            last_error: retry_error,
        };
        write(ctx, &storage_key, record(attempts, state)).await?;
        tokio::time::sleep(policy.delay(attempts, jitter_random())).await;
    }
}

fn too_large(ctx: &Ctx, name: &str, at: &At, size: usize, limit: usize) -> Error {
    Error::ValueTooLarge {
        instance: ctx.id.clone(),
        what: format!("the outcome of step {name:?} ({at})"),
        size,
        limit,
    }
}

fn done_state<T: Serialize, E: Serialize + std::fmt::Debug>(
    ctx: &Ctx,
    name: &str,
    at: &At,
    outcome: &Result<T, E>,
    fingerprint: u64,
) -> Result<CheckpointState, Error> {
    let bytes = codec::encode(outcome).map_err(|reason| Error::Encode {
        instance: ctx.id.clone(),
        what: format!("the outcome of step {name:?} ({at})"),
        reason,
    })?;
    let limit = ctx.core.config.max_value_size;
    if bytes.len() > limit {
        return Err(too_large(ctx, name, at, bytes.len(), limit));
    }
    Ok(CheckpointState::Done {
        finished_at_ms: now_ms(),
        ok: outcome.is_ok(),
        type_name: std::any::type_name::<Result<T, E>>().to_string(),
        fingerprint,
        error_text: outcome.as_ref().err().map(|e| format!("{e:?}")),
        outcome: bytes,
    })
}

async fn write(ctx: &Ctx, storage_key: &[u8], record: CheckpointRecord) -> Result<(), Error> {
    let progress = !matches!(record.state, CheckpointState::Retrying { .. });
    let mut batch = record_batch(ctx, storage_key.to_vec(), &record)?;
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
    record_batch(ctx, occurrence_key(&ctx.id, name, occurrence), record)
}

/// A batch that stores `record` under `key` in `Checkpoints`.
fn record_batch(ctx: &Ctx, key: Vec<u8>, record: &CheckpointRecord) -> Result<Batch, Error> {
    let value = codec::encode(record).map_err(|reason| Error::Encode {
        instance: ctx.id.clone(),
        what: "a checkpoint record".into(),
        reason,
    })?;
    let mut batch = Batch::new();
    batch.put(Tree::Checkpoints, key, value);
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
