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
//! an event wakes it. See `engine/scheduler.rs`.
//!
//! Every deadline is read from, and waited on, the engine's clock.

use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use crate::backend::{Committed, Write};
use crate::context::Ctx;
use crate::error::Error;
use crate::future::BoxFuture;
use crate::journal::decode_value;
use crate::records::{CheckpointRecord, CheckpointState, EventRecord, WaitCond};
use crate::time::{duration_ms, to_ms};

impl Ctx {
    /// Sleeps for `duration`, durably (what `sleep!` does): the absolute
    /// deadline is checkpointed the first time; after a restart only the
    /// remainder is waited (never more than `duration`), and a deadline that
    /// passed while the process was down completes at once. A long sleep
    /// parks the instance: it holds no task or memory until it wakes.
    pub fn sleep<'c>(&'c self, name: &'static str, duration: Duration) -> BoxFuture<'c, ()> {
        sleep_at(self, name, Target::For(duration), false)
    }

    /// Sleeps until `until`, durably (what `sleep_until!` does); see [`sleep`](Self::sleep).
    pub fn sleep_until<'c>(&'c self, name: &'static str, until: SystemTime) -> BoxFuture<'c, ()> {
        sleep_at(self, name, Target::Until(until), false)
    }

    /// Waits for event `name` (what `wait_for!` does) and returns its
    /// payload, sent with [`Engine::send_event`](crate::Engine::send_event).
    /// The n-th wait of a name takes the n-th event of that name, whether it
    /// was sent before or after the wait was reached; the payload is
    /// checkpointed. A waiting instance is parked.
    pub fn wait_for<'c, T: DeserializeOwned + Send + 'static>(
        &'c self,
        name: &'static str,
    ) -> BoxFuture<'c, T> {
        wait_for_at(self, name, false)
    }

    /// Like [`wait_for`](Self::wait_for), giving up after `timeout` (the
    /// deadline is checkpointed the first time): `None` if no event came.
    pub fn wait_for_timeout<'c, T: DeserializeOwned + Send + 'static>(
        &'c self,
        name: &'static str,
        timeout: Duration,
    ) -> BoxFuture<'c, Option<T>> {
        wait_for_timeout_at(self, name, timeout, false)
    }
}

/// Sleeps for `duration`, durably (a `sleep!` site): see [`Ctx::sleep`].
pub fn sleep<'c>(ctx: &'c Ctx, name: &'static str, duration: Duration) -> BoxFuture<'c, ()> {
    sleep_at(ctx, name, Target::For(duration), true)
}

/// Sleeps until `until`, durably (a `sleep_until!` site): see [`Ctx::sleep_until`].
pub fn sleep_until<'c>(ctx: &'c Ctx, name: &'static str, until: SystemTime) -> BoxFuture<'c, ()> {
    sleep_at(ctx, name, Target::Until(until), true)
}

/// A sleep; `declared` when it is a site of the workflow's manifest.
fn sleep_at<'c>(
    ctx: &'c Ctx,
    name: &'static str,
    target: Target,
    declared: bool,
) -> BoxFuture<'c, ()> {
    let site = Site::new(ctx, name, declared);
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
fn wait_for_at<'c, T: DeserializeOwned + Send + 'static>(
    ctx: &'c Ctx,
    name: &'static str,
    declared: bool,
) -> BoxFuture<'c, T> {
    let site = Site::new(ctx, name, declared);
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
fn wait_for_timeout_at<'c, T: DeserializeOwned + Send + 'static>(
    ctx: &'c Ctx,
    name: &'static str,
    timeout: Duration,
    declared: bool,
) -> BoxFuture<'c, Option<T>> {
    let site = Site::new(ctx, name, declared);
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

impl Site {
    /// The next occurrence of `name`, numbered when the site is created.
    fn new(ctx: &Ctx, name: &'static str, declared: bool) -> Site {
        Site {
            name,
            occurrence: ctx.next_occurrence(name),
            declared,
            seq: ctx.next_seq(),
        }
    }
}

fn internal(ctx: &Ctx, detail: &str) -> Error {
    Error::Replay(crate::error::ReplayError::Nondeterminism {
        instance: ctx.id.clone(),
        detail: detail.to_string(),
    })
}

enum Target {
    For(Duration),
    Until(SystemTime),
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
            let now = ctx.now_ms();
            let (deadline_ms, duration_ms) = match target {
                Target::For(d) => (now.saturating_add(duration_ms(d)), duration_ms(d)),
                Target::Until(t) => {
                    let at = to_ms(t);
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
            return Err(Error::Instance(crate::error::InstanceError::Cancelled {
                instance: ctx.id.clone(),
            }));
        }
        let now = ctx.now_ms();
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
            _ = ctx.services.clock.sleep_until(now + remaining) => {}
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
                let deadline_ms = ctx.now_ms().saturating_add(duration_ms(t));
                write(ctx, site, CheckpointState::Waiting { deadline_ms }).await?;
                Some(deadline_ms)
            }
            None => None,
        },
    };
    let mut bell = ctx.signals.bell.subscribe();
    let backend = &ctx.services.backend;
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
            return Err(Error::Instance(crate::error::InstanceError::Cancelled {
                instance: ctx.id.clone(),
            }));
        }
        // Busy while the backend looks: a lookup that is pending (a query
        // over the network) must not let the driver park the instance on
        // this wait, or an event already stored makes it park, find the
        // event first, run again and park again, for ever.
        let found = {
            let _busy = ctx.signals.busy();
            backend.event(&ctx.id, name, occurrence).await?
        };
        if let Some(event) = found {
            return receive(ctx, site, event).await.map(Some);
        }
        if let Some(deadline) = deadline_ms {
            let now = ctx.now_ms();
            if now >= deadline {
                // Decided by the backend under the instance's lock: a
                // concurrent send either lands before (and is received) or
                // numbers itself after this timed-out wait.
                let record = checkpoint_record(
                    ctx,
                    site,
                    CheckpointState::TimedOut {
                        finished_at_ms: now,
                    },
                );
                let committed = {
                    let _busy = ctx.signals.busy();
                    backend
                        .commit(&ctx.id, ctx.lease, Write::TimeOut { record })
                        .await?
                };
                if committed == Committed::EventFirst {
                    continue;
                }
                tracing::info!(
                    durable.instance_id = %ctx.id,
                    durable.event = name,
                    durable.occurrence = occurrence,
                    "wait timed out"
                );
                return Ok(None);
            }
            tokio::select! {
                _ = ctx.services.clock.sleep_until(deadline) => {}
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
    event: EventRecord,
) -> Result<T, Error> {
    let payload = decode_payload(ctx, site, (&event.shape, event.fingerprint), &event.payload)?;
    tracing::debug!(
        durable.instance_id = %ctx.id,
        durable.event = site.name,
        durable.occurrence = site.occurrence,
        "event received"
    );
    let state = CheckpointState::Received {
        finished_at_ms: ctx.now_ms(),
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
    let error = |reason: String| {
        Error::Replay(crate::error::ReplayError::EventDecode {
            instance: ctx.id.clone(),
            event: site.name.to_string(),
            occurrence: site.occurrence,
            stored_type: stored.to_string(),
            expected_type: std::any::type_name::<T>(),
            reason,
        })
    };
    if fingerprint != expected.fingerprint {
        return Err(error(format!(
            "it was written as `{stored}` (fingerprint {fingerprint:016x}); the wait reads `{}` ({:016x})",
            expected.text, expected.fingerprint
        )));
    }
    decode_value(payload).map_err(error)
}

fn checkpoint_record(ctx: &Ctx, site: Site, state: CheckpointState) -> CheckpointRecord {
    CheckpointRecord {
        name: site.name.to_string(),
        occurrence: site.occurrence,
        key: None,
        declared: site.declared,
        seq: site.seq,
        attempts: 0,
        started_at_ms: ctx.now_ms(),
        state,
    }
}

async fn write(ctx: &Ctx, site: Site, state: CheckpointState) -> Result<(), Error> {
    let _busy = ctx.signals.busy();
    ctx.checkpoint(checkpoint_record(ctx, site, state), false)
        .await
}
