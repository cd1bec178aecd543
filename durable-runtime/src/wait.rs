//! The operations behind `sleep!`, `sleep_until!` and `wait_for!`: durable
//! timers and external events.
//!
//! A sleep checkpoints its absolute deadline the first time it is reached; a
//! replay waits only for what is left, never longer than the sleep's own
//! duration (so a clock set backwards cannot stretch it). A wait for event
//! `name` consumes the events sent to the instance under that name in order:
//! its n-th occurrence takes the n-th event, whether the event arrived
//! before or after the wait was reached, and checkpoints the payload. With a
//! timeout, the deadline is checkpointed the first time too.
//!
//! While an instance is blocked in such waits only (no step running, no
//! write in flight) and none ends within [`PARK_AFTER_MS`], the engine parks
//! it: drops its task and keeps an entry in its park table until a timer or
//! an event wakes it. See `engine.rs`.

use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

use crate::codec;
use crate::context::Ctx;
use crate::error::Error;
use crate::records::{
    CheckpointRecord, CheckpointState, EventRecord, WaitCond, now_ms, occurrence_key,
};
use crate::store::Tree;
use crate::workflow::BoxFuture;

/// Waits ending sooner than this stay in memory instead of parking.
pub(crate) const PARK_AFTER_MS: u64 = 1_000;

/// Sleeps for `duration`, durably (a `sleep!` site): see [`Ctx::sleep`].
pub fn sleep<'c>(ctx: &'c Ctx, name: &'static str, duration: Duration) -> BoxFuture<'c, ()> {
    sleep_at(ctx, name, Target::For(duration), true)
}

/// Sleeps until `until`, durably (a `sleep_until!` site): see [`Ctx::sleep_until`].
pub fn sleep_until<'c>(ctx: &'c Ctx, name: &'static str, until: SystemTime) -> BoxFuture<'c, ()> {
    sleep_at(ctx, name, Target::Until(until), true)
}

/// A sleep; `declared` when it is a site of the workflow's manifest.
pub(crate) fn sleep_at<'c>(
    ctx: &'c Ctx,
    name: &'static str,
    target: Target,
    declared: bool,
) -> BoxFuture<'c, ()> {
    let occurrence = ctx.next_occurrence(name);
    let site = Site {
        name,
        occurrence,
        declared,
        seq: ctx.next_seq(),
    };
    Box::pin(async move {
        if let Err(error) = sleep_inner(ctx, site, target).await {
            ctx.abort(error).await
        }
    })
}

/// What `wait_for!(name)` expands to: see [`Ctx::wait_for`].
pub fn wait_for_site<'c, T: DeserializeOwned + Send + 'static>(
    ctx: &'c Ctx,
    _site: PhantomData<fn() -> T>,
    name: &'static str,
) -> BoxFuture<'c, T> {
    wait_for_at(ctx, name, true)
}

/// What `wait_for!(name, timeout = ..)` expands to: see [`Ctx::wait_for_timeout`].
pub fn wait_for_timeout_site<'c, T: DeserializeOwned + Send + 'static>(
    ctx: &'c Ctx,
    _site: PhantomData<fn() -> T>,
    name: &'static str,
    timeout: Duration,
) -> BoxFuture<'c, Option<T>> {
    wait_for_timeout_at(ctx, name, timeout, true)
}

/// Waits for event `name` and returns its payload.
pub(crate) fn wait_for_at<'c, T: DeserializeOwned + Send + 'static>(
    ctx: &'c Ctx,
    name: &'static str,
    declared: bool,
) -> BoxFuture<'c, T> {
    let site = Site {
        name,
        occurrence: ctx.next_occurrence(name),
        declared,
        seq: ctx.next_seq(),
    };
    Box::pin(async move {
        match wait_inner::<T>(ctx, site, None).await {
            Ok(Some(payload)) => payload,
            Ok(None) => {
                ctx.abort(internal(ctx, "a wait without a timeout timed out"))
                    .await
            }
            Err(error) => ctx.abort(error).await,
        }
    })
}

/// Waits for event `name` at most `timeout`.
pub(crate) fn wait_for_timeout_at<'c, T: DeserializeOwned + Send + 'static>(
    ctx: &'c Ctx,
    name: &'static str,
    timeout: Duration,
    declared: bool,
) -> BoxFuture<'c, Option<T>> {
    let site = Site {
        name,
        occurrence: ctx.next_occurrence(name),
        declared,
        seq: ctx.next_seq(),
    };
    Box::pin(async move {
        match wait_inner::<T>(ctx, site, Some(timeout)).await {
            Ok(payload) => payload,
            Err(error) => ctx.abort(error).await,
        }
    })
}

/// One sleep or wait occurrence, as it is recorded.
#[derive(Clone, Copy)]
struct Site {
    name: &'static str,
    occurrence: u32,
    declared: bool,
    seq: u64,
}

fn internal(ctx: &Ctx, detail: &str) -> Error {
    Error::Nondeterminism {
        instance: ctx.id.clone(),
        detail: detail.to_string(),
    }
}

pub(crate) enum Target {
    For(Duration),
    Until(SystemTime),
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn sleep_inner(ctx: &Ctx, site: Site, target: Target) -> Result<(), Error> {
    let Site {
        name, occurrence, ..
    } = site;
    let (deadline_ms, duration_ms) = match ctx.take_checkpoint(name, occurrence) {
        Some(CheckpointRecord {
            state:
                CheckpointState::Sleeping {
                    deadline_ms,
                    duration_ms,
                },
            ..
        }) => (deadline_ms, duration_ms),
        Some(other) => return Err(ctx.diverged(name, occurrence, &other.state, "a sleep")),
        None => {
            let now = now_ms();
            let (deadline_ms, duration_ms) = match target {
                Target::For(d) => (now.saturating_add(ms(d)), ms(d)),
                Target::Until(t) => {
                    let at = t.duration_since(UNIX_EPOCH).map(ms).unwrap_or(0);
                    (at, at.saturating_sub(now))
                }
            };
            let state = CheckpointState::Sleeping {
                deadline_ms,
                duration_ms,
            };
            write(ctx, site, state).await?;
            (deadline_ms, duration_ms)
        }
    };
    let mut bell = ctx.signals.bell.subscribe();
    loop {
        if ctx.signals.is_cancelled() {
            return Err(Error::Cancelled {
                instance: ctx.id.clone(),
            });
        }
        let now = now_ms();
        let remaining = deadline_ms.saturating_sub(now).min(duration_ms);
        if remaining == 0 {
            return Ok(());
        }
        let _wait = ctx.signals.wait(WaitCond {
            name: name.to_string(),
            occurrence,
            deadline_ms: Some(now + remaining),
            event_type: None,
        });
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(remaining)) => {}
            _ = bell.changed() => {}
        }
    }
}

async fn wait_inner<T: DeserializeOwned + 'static>(
    ctx: &Ctx,
    site: Site,
    timeout: Option<Duration>,
) -> Result<Option<T>, Error> {
    let Site {
        name, occurrence, ..
    } = site;
    let expected = crate::manifest::shape_of::<T>();
    let deadline_ms = match ctx.take_checkpoint(name, occurrence) {
        Some(CheckpointRecord {
            state:
                CheckpointState::Received {
                    type_name,
                    payload,
                    fingerprint,
                    ..
                },
            ..
        }) => {
            return decode_payload(ctx, site, (&type_name, fingerprint), &payload).map(Some);
        }
        Some(CheckpointRecord {
            state: CheckpointState::TimedOut { .. },
            ..
        }) => return Ok(None),
        Some(CheckpointRecord {
            state: CheckpointState::Waiting { deadline_ms },
            ..
        }) => Some(deadline_ms),
        Some(other) => {
            return Err(ctx.diverged(name, occurrence, &other.state, "a wait for an event"));
        }
        None => match timeout {
            Some(t) => {
                let deadline_ms = now_ms().saturating_add(ms(t));
                write(ctx, site, CheckpointState::Waiting { deadline_ms }).await?;
                Some(deadline_ms)
            }
            None => None,
        },
    };
    let mut bell = ctx.signals.bell.subscribe();
    let key = occurrence_key(&ctx.id, name, occurrence);
    let cond = WaitCond {
        name: name.to_string(),
        occurrence,
        deadline_ms,
        event_type: Some(expected.text.clone()),
    };
    let _wait = ctx.signals.wait(cond);
    loop {
        bell.borrow_and_update();
        if ctx.signals.is_cancelled() {
            return Err(Error::Cancelled {
                instance: ctx.id.clone(),
            });
        }
        if let Some(event) = ctx.core.store.get(Tree::Events, &key)? {
            return receive(ctx, site, &event).await.map(Some);
        }
        if let Some(deadline) = deadline_ms {
            let now = now_ms();
            if now >= deadline {
                // Decided under the event lock, so that a concurrent send
                // either lands before (and is received) or numbers itself
                // after this timed-out wait.
                let _events = ctx.core.event_lock.lock().await;
                if let Some(event) = ctx.core.store.get(Tree::Events, &key)? {
                    return receive(ctx, site, &event).await.map(Some);
                }
                write(
                    ctx,
                    site,
                    CheckpointState::TimedOut {
                        finished_at_ms: now,
                    },
                )
                .await?;
                return Ok(None);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(deadline - now)) => {}
                _ = bell.changed() => {}
            }
        } else {
            let _ = bell.changed().await;
        }
    }
}

async fn receive<T: DeserializeOwned + 'static>(
    ctx: &Ctx,
    site: Site,
    event: &[u8],
) -> Result<T, Error> {
    let Site {
        name, occurrence, ..
    } = site;
    let event: EventRecord = codec::decode(event).map_err(|e| {
        Error::Store(crate::error::StoreError::Decode {
            what: format!(
                "event {name:?} (number {occurrence}) of instance {:?}",
                ctx.id
            ),
            reason: e.to_string(),
        })
    })?;
    let payload = decode_payload(ctx, site, (&event.shape, event.fingerprint), &event.payload)?;
    let state = CheckpointState::Received {
        finished_at_ms: now_ms(),
        type_name: event.type_name,
        fingerprint: event.fingerprint,
        payload: event.payload,
    };
    write(ctx, site, state).await?;
    Ok(payload)
}

/// Decodes a payload, only if it was written as the type asked for.
fn decode_payload<T: DeserializeOwned + 'static>(
    ctx: &Ctx,
    site: Site,
    (stored, fingerprint): (&str, u64),
    payload: &[u8],
) -> Result<T, Error> {
    let expected = crate::manifest::shape_of::<T>();
    let error = |reason: String| Error::EventDecode {
        instance: ctx.id.clone(),
        event: site.name.to_string(),
        occurrence: site.occurrence,
        stored_type: stored.to_string(),
        expected_type: expected.text.clone(),
        reason,
    };
    if fingerprint != expected.fingerprint {
        return Err(error(format!(
            "it was written as another type (fingerprint {fingerprint:016x}, the wait's is {:016x})",
            expected.fingerprint
        )));
    }
    codec::decode(payload).map_err(|e| error(e.to_string()))
}

async fn write(ctx: &Ctx, site: Site, state: CheckpointState) -> Result<(), Error> {
    let _busy = ctx.signals.busy();
    let record = CheckpointRecord {
        name: site.name.to_string(),
        occurrence: site.occurrence,
        key: None,
        declared: site.declared,
        seq: site.seq,
        attempts: 0,
        started_at_ms: now_ms(),
        state,
    };
    let batch = crate::step::checkpoint_batch(ctx, site.name, site.occurrence, &record)?;
    ctx.core.committer.commit(batch).await.map_err(Error::from)
}
