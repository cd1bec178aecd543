//! Published state and streams: key/value state a workflow sets
//! ([`Ctx::set_event`]) and values it appends to streams
//! ([`Ctx::write_stream`]), for outside code to read
//! ([`Engine::get_event`](crate::Engine::get_event),
//! [`Engine::read_stream`](crate::Engine::read_stream)).
//!
//! Each write is a step of a reserved name (`durable::set_event`,
//! `durable::write_stream`), numbered by occurrence, whose outcome is what
//! it wrote (`(key, value)`, `(key, offset, value)`): the checkpoint and
//! the value are written in one atomic, fenced write, so a replay finds
//! the checkpoint and writes nothing again. A later `set_event` of the same
//! key replaces the value (last write wins, in workflow order); stream
//! offsets are assigned per key in call order (0, 1, 2, ...), so a replay
//! assigns the same ones. Values are stored encoded, with their type's
//! fingerprint and shape, like an event's payload: a read as another type
//! is refused, not misdecoded.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::Write;
use crate::context::Ctx;
use crate::error::{Error, ReplayError, Result};
use crate::future::BoxFuture;
use crate::records::{
    CheckpointRecord, CheckpointState, EventRecord, ReservedSite, SET_EVENT, WRITE_STREAM,
};

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
        let site = Site {
            name: SET_EVENT,
            occurrence,
            seq: self.next_seq(),
            key: key.to_string(),
            offset: None,
        };
        let value = self.stored_value(&site.key, value);
        Box::pin(async move { self.write_site(site, value).await })
    }

    /// Appends `value` to stream `key` for outside code to read in order
    /// with [`Engine::read_stream`](crate::Engine::read_stream), durably,
    /// and returns its offset: the first value of a key is at 0, the next
    /// at 1, and so on, in call order. It is checkpointed like a step: a
    /// replay does not append it again (the stream never holds a value
    /// twice) and returns the same offset. Progress of a long workflow, the
    /// tokens of an LLM call.
    ///
    /// Errors, with nothing appended and no offset taken: the value does not
    /// encode, or it is over the engine's `max_value_size`. If the store
    /// fails or the instance was taken over, the future never resolves: the
    /// engine stops the instance, as for a step.
    ///
    /// ```
    /// use durable_runtime::Ctx;
    ///
    /// async fn emit(ctx: &Ctx, tokens: &[String]) -> durable_runtime::Result<()> {
    ///     for token in tokens {
    ///         ctx.write_stream("tokens", token).await?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn write_stream<'c, T>(&'c self, key: &str, value: &T) -> BoxFuture<'c, Result<u64>>
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let occurrence = self.next_occurrence(WRITE_STREAM);
        let seq = self.next_seq();
        let value = match self.stored_value(key, value) {
            Ok(value) => value,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        let offset = {
            let mut offsets = self
                .stream_offsets
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let next = offsets.entry(key.to_string()).or_insert(0);
            let offset = *next;
            *next += 1;
            offset
        };
        let site = Site {
            name: WRITE_STREAM,
            occurrence,
            seq,
            key: key.to_string(),
            offset: Some(offset),
        };
        Box::pin(async move {
            self.write_site(site, Ok(value)).await?;
            Ok(offset)
        })
    }

    /// `value` encoded (within the size limit) with its type.
    fn stored_value<T>(&self, key: &str, value: &T) -> Result<EventRecord>
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let payload =
            self.services
                .encode_value(&self.id, &format!("published key {key:?}"), value)?;
        let shape = crate::manifest::shape_of::<T>();
        Ok(EventRecord {
            type_name: std::any::type_name::<T>().to_string(),
            fingerprint: shape.fingerprint,
            shape: shape.text.clone(),
            payload,
            sent_at_ms: self.now_ms(),
        })
    }

    /// Replays the checkpoint of `site`, or writes `value` with it.
    async fn write_site(&self, site: Site, value: Result<EventRecord>) -> Result<()> {
        let Site {
            name,
            occurrence,
            seq,
            key,
            offset,
        } = site;
        match self.take_checkpoint(name, occurrence) {
            Some(CheckpointRecord {
                state: CheckpointState::Done { outcome, .. },
                ..
            }) => {
                let same = match offset {
                    None => crate::codec::decode::<(String, EventRecord)>(&outcome)
                        .is_ok_and(|(k, _)| k == key),
                    Some(offset) => crate::codec::decode::<(String, u64, EventRecord)>(&outcome)
                        .is_ok_and(|(k, o, _)| k == key && o == offset),
                };
                if same {
                    return Ok(());
                }
                let error = Error::Replay(ReplayError::Nondeterminism {
                    instance: self.id.clone(),
                    detail: format!(
                        "{name:?} (occurrence {occurrence}) was not recorded for key {key:?}"
                    ),
                });
                self.abort(error).await
            }
            Some(other) => {
                let error = self.diverged(name, occurrence, &other.state, "a published value");
                self.abort(error).await
            }
            None => {}
        }
        let value = value?;
        // The checkpoint holds what it wrote: a fork's new instance, which
        // replays it, starts with that state.
        let outcome = match offset {
            None => crate::codec::encode(&(&key, &value)),
            Some(offset) => crate::codec::encode(&(&key, offset, &value)),
        }
        .map_err(|reason| {
            Error::Replay(ReplayError::Encode {
                instance: self.id.clone(),
                what: format!("published key {key:?}"),
                reason,
            })
        })?;
        let now = self.now_ms();
        let site = ReservedSite {
            name,
            occurrence,
            key: None,
            seq,
            started_at_ms: now,
        };
        let record = CheckpointRecord::reserved(site, outcome, true, None, now);
        let write = match offset {
            None => Write::Publish {
                record,
                key: key.clone(),
                value,
            },
            Some(offset) => Write::Append {
                record,
                key: key.clone(),
                offset,
                value,
            },
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
    }
}

/// One `set_event` (no offset) or `write_stream` occurrence.
struct Site {
    name: &'static str,
    occurrence: u32,
    seq: u64,
    key: String,
    offset: Option<u64>,
}
