//! Published state: key/value state a workflow sets
//! ([`Ctx::set_event`]) and outside code reads
//! ([`Engine::get_event`](crate::Engine::get_event)).
//!
//! A `set_event` is a step of the reserved name `durable::set_event`,
//! numbered by occurrence, whose outcome is the `(key, value)` it
//! published: its checkpoint and the value are written in one atomic,
//! fenced write, so a replay finds the checkpoint and publishes
//! nothing again, and a later `set_event` of the same key replaces the
//! value (last write wins, in workflow order). The value is stored encoded,
//! with its type's fingerprint and shape, like an event's payload: a read
//! as another type is refused, not misdecoded.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::Write;
use crate::context::Ctx;
use crate::error::{Error, ReplayError, Result};
use crate::future::BoxFuture;
use crate::records::{CheckpointRecord, CheckpointState, EventRecord, SET_EVENT};

impl Ctx {
    /// Publishes `value` under `key` for outside code to read with
    /// [`Engine::get_event`](crate::Engine::get_event), durably: when the
    /// future resolves, the value is on disk. It is checkpointed like a
    /// step: a replay (after a crash or restart) does not publish it again,
    /// so readers never see an older value come back. A later `set_event`
    /// of the same key replaces the value (last write wins, in workflow
    /// order).
    ///
    /// The value is encoded when this is called (the future does not hold
    /// it). Errors, with nothing published: the value does not encode, or
    /// it is over the engine's `max_value_size`
    /// ([`ReplayError::ValueTooLarge`]). If the store fails or the instance
    /// was taken over, the future never resolves: the engine stops the
    /// instance, as for a step.
    ///
    /// ```
    /// use durable_runtime::Ctx;
    ///
    /// async fn report(ctx: &Ctx, done: u32, total: u32) -> durable_runtime::Result<()> {
    ///     ctx.set_event("progress", &(done, total)).await
    /// }
    /// ```
    pub fn set_event<'c, T>(&'c self, key: &str, value: &T) -> BoxFuture<'c, Result<()>>
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let occurrence = self.next_occurrence(SET_EVENT);
        let seq = self.next_seq();
        let key = key.to_string();
        let encoded =
            self.services
                .encode_value(&self.id, &format!("published key {key:?}"), value);
        let shape = crate::manifest::shape_of::<T>();
        let type_name = std::any::type_name::<T>();
        Box::pin(async move {
            match self.take_checkpoint(SET_EVENT, occurrence) {
                Some(CheckpointRecord {
                    state: CheckpointState::Done { outcome, .. },
                    ..
                }) => {
                    let recorded = crate::codec::decode::<(String, EventRecord)>(&outcome);
                    if matches!(&recorded, Ok((k, _)) if *k == key) {
                        return Ok(());
                    }
                    let error = Error::Replay(ReplayError::Nondeterminism {
                        instance: self.id.clone(),
                        detail: format!(
                            "set_event occurrence {occurrence} was not recorded for key {key:?}"
                        ),
                    });
                    self.abort(error).await
                }
                Some(other) => {
                    let error = self.diverged(SET_EVENT, occurrence, &other.state, "a set_event");
                    self.abort(error).await
                }
                None => {}
            }
            let payload = encoded?;
            let now = self.now_ms();
            let value = EventRecord {
                type_name: type_name.to_string(),
                fingerprint: shape.fingerprint,
                shape: shape.text.clone(),
                payload,
                sent_at_ms: now,
            };
            // The checkpoint holds what it published: a fork's new
            // instance, which replays it, starts with that state.
            let outcome = crate::codec::encode(&(&key, &value)).map_err(|reason| {
                Error::Replay(ReplayError::Encode {
                    instance: self.id.clone(),
                    what: format!("published key {key:?}"),
                    reason,
                })
            })?;
            let record = CheckpointRecord {
                name: SET_EVENT.to_string(),
                occurrence,
                key: None,
                declared: false,
                seq,
                attempts: 0,
                started_at_ms: now,
                state: CheckpointState::Done {
                    finished_at_ms: now,
                    ok: true,
                    type_name: SET_EVENT.to_string(),
                    fingerprint: 0,
                    outcome,
                    error_text: None,
                },
            };
            let write = Write::Publish {
                record,
                key: key.clone(),
                value,
            };
            let written = {
                let _busy = self.signals.busy();
                self.services
                    .backend
                    .commit(&self.id, self.lease, write)
                    .await
            };
            if let Err(error) = written {
                self.abort(error).await
            }
            tracing::debug!(durable.instance_id = %self.id, durable.key = %key, "state published");
            Ok(())
        })
    }
}
