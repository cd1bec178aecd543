//! Reading published state and streams (`get_event`, `read_stream`, each
//! with an optional wait woken by the backend's notices) and idempotent
//! events (`send_event_with_key`).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;

use crate::backend::Notice;
use crate::error::{Error, Result, StoreError, UsageError};
use crate::ids::validate_id;
use crate::records::EventRecord;

use super::Engine;

/// How often a waiting read reads again without a notice (a hint across
/// processes may be lost; one in this process is not).
const POLL: Duration = Duration::from_millis(500);

/// Most stream values one `read_stream` returns.
const STREAM_PAGE: usize = 1024;

impl Engine {
    /// The value instance `id` published under `key` with
    /// [`Ctx::set_event`](crate::Ctx::set_event), decoded as `T`; `None`
    /// while the key was never set. Reads the store, so it works from any
    /// process on the same store (on PostgreSQL, from a pure client that
    /// registers no workflow).
    ///
    /// Errors: [`UsageError::NotFound`] for an unknown instance,
    /// [`UsageError::PublishedTypeMismatch`] when the value was published
    /// as another type than `T` (nothing is decoded).
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// let progress: Option<(u32, u32)> = engine.get_event("import-7", "progress").await?;
    /// if let Some((done, total)) = progress {
    ///     println!("{done}/{total}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_event<T: DeserializeOwned + 'static>(
        &self,
        id: &str,
        key: &str,
    ) -> Result<Option<T>> {
        validate_id(id)?;
        match self.core.services.backend.published(id, key).await? {
            Some(stored) => decode_as(id, key, stored).map(Some),
            None => Ok(None),
        }
    }

    /// [`get_event`](Self::get_event), waiting up to `timeout` for the key
    /// to be set: returns the value as soon as it is published (woken by
    /// the backend's notice of it, across processes on PostgreSQL through
    /// LISTEN/NOTIFY, with a read every half second in case a notice was
    /// lost), or `None` once `timeout` passed without it. The same errors
    /// as `get_event`, at once.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// use std::time::Duration;
    ///
    /// let url: Option<String> = engine
    ///     .get_event_timeout("signup-42", "confirm_url", Duration::from_secs(30))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_event_timeout<T: DeserializeOwned + 'static>(
        &self,
        id: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<T>> {
        self.wait_for_key(id, key, timeout, async || self.get_event(id, key).await)
            .await
    }

    /// Up to 1,024 values of stream `key` of instance `id` (appended with
    /// [`Ctx::write_stream`](crate::Ctx::write_stream)) from offset
    /// `from_offset` on, decoded as `T`, and the offset to read from next
    /// (after the last value returned; `from_offset` when there is none
    /// yet). Offsets are dense: the first value is at 0. Reading from the
    /// returned offset again and again reads the stream incrementally, each
    /// value once, in order, from any process on the same store.
    ///
    /// Errors: [`UsageError::NotFound`] for an unknown instance,
    /// [`UsageError::PublishedTypeMismatch`] when a value was written as
    /// another type than `T`.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// let mut offset = 0;
    /// let (tokens, next) = engine.read_stream::<String>("chat-9", "tokens", offset).await?;
    /// for token in tokens {
    ///     print!("{token}");
    /// }
    /// offset = next;
    /// # let _ = offset;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_stream<T: DeserializeOwned + 'static>(
        &self,
        id: &str,
        key: &str,
        from_offset: u64,
    ) -> Result<(Vec<T>, u64)> {
        validate_id(id)?;
        let entries = self
            .core
            .services
            .backend
            .stream(id, key, from_offset, STREAM_PAGE)
            .await?;
        let mut next = from_offset;
        let mut values = Vec::with_capacity(entries.len());
        for (offset, entry) in entries {
            values.push(decode_as(id, key, entry)?);
            next = offset + 1;
        }
        Ok((values, next))
    }

    /// [`read_stream`](Self::read_stream), waiting up to `timeout` for a
    /// value at or after `from_offset` when there is none yet (woken as
    /// [`get_event_timeout`](Self::get_event_timeout) is); an empty list
    /// and `from_offset` once the timeout passed.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// use std::time::Duration;
    ///
    /// let mut offset = 0;
    /// loop {
    ///     let (tokens, next) = engine
    ///         .read_stream_timeout::<String>("chat-9", "tokens", offset, Duration::from_secs(30))
    ///         .await?;
    ///     if tokens.is_empty() {
    ///         break;
    ///     }
    ///     tokens.iter().for_each(|t| print!("{t}"));
    ///     offset = next;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_stream_timeout<T: DeserializeOwned + 'static>(
        &self,
        id: &str,
        key: &str,
        from_offset: u64,
        timeout: Duration,
    ) -> Result<(Vec<T>, u64)> {
        let read = async || {
            let (values, next) = self.read_stream(id, key, from_offset).await?;
            Ok((!values.is_empty()).then_some((values, next)))
        };
        Ok(self
            .wait_for_key(id, key, timeout, read)
            .await?
            .unwrap_or((Vec::new(), from_offset)))
    }

    /// Runs `read` until it returns `Some`, waiting between two reads for
    /// the notice that instance `id` wrote `key` (or a poll interval), at
    /// most `timeout`: then `None`.
    async fn wait_for_key<V>(
        &self,
        id: &str,
        key: &str,
        timeout: Duration,
        mut read: impl AsyncFnMut() -> Result<Option<V>>,
    ) -> Result<Option<V>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first read: a value written between the
        // read and the wait still rings.
        let mut notices = self.core.services.backend.subscribe();
        loop {
            if let Some(value) = read().await? {
                return Ok(Some(value));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let next_read = deadline.min(now + POLL);
            loop {
                let notice = tokio::select! {
                    _ = tokio::time::sleep_until(next_read) => break,
                    notice = notices.recv() => notice,
                };
                match notice {
                    Ok(Notice::Published { id: i, key: k }) if i == id && k == key => break,
                    Ok(_) => {}
                    // Notices were dropped: one of them may have been ours.
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => {
                        tokio::time::sleep_until(next_read).await;
                        break;
                    }
                }
            }
        }
    }

    /// [`send_event`](Self::send_event) with an idempotency key: the first
    /// send with `key` to instance `id` stores the event (and returns
    /// `true`); any later send with the same key to the same instance is a
    /// no-op that returns `Ok(false)`: the event is delivered once, across
    /// restarts and, on PostgreSQL, across processes (decided under the
    /// instance's lock, with the key stored in the same atomic write as the
    /// event). A retried webhook delivers once; the key is typically the
    /// webhook's delivery id. A send that was refused (a type mismatch, a
    /// finished instance) stores no key: a retry is checked again. After
    /// the instance finished, a retry of a delivered send still returns
    /// `Ok(false)`.
    ///
    /// Keys are per instance: the same key sent to two instances delivers
    /// to both. The plain `send_event` does not look at keys.
    ///
    /// Errors: those of `send_event`, for a key not seen before.
    ///
    /// ```
    /// # async fn demo(engine: durable_runtime::Engine) -> durable_runtime::Result<()> {
    /// let delivery_id = "whk_01J9Z";
    /// let stored = engine
    ///     .send_event_with_key("order-17", "paid", 1999u64, delivery_id)
    ///     .await?;
    /// if !stored {
    ///     println!("duplicate delivery {delivery_id}, ignored");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_event_with_key<P: Serialize + DeserializeOwned + 'static>(
        &self,
        id: impl Into<String>,
        name: impl Into<String>,
        payload: P,
        key: &str,
    ) -> Result<bool> {
        let (id, name) = (id.into(), name.into());
        validate_id(&id)?;
        let payload = self
            .core
            .services
            .encode_value(&id, &format!("event {name:?}"), &payload)?;
        self.core
            .deliver(
                id,
                name,
                (std::any::type_name::<P>(), crate::manifest::shape_of::<P>()),
                payload,
                Some(key),
            )
            .await
    }
}

/// `stored` (published under `key` by instance `id`) decoded as `T`, only
/// if it was written as `T`.
fn decode_as<T: DeserializeOwned + 'static>(id: &str, key: &str, stored: EventRecord) -> Result<T> {
    let asked = crate::manifest::shape_of::<T>();
    if stored.fingerprint != asked.fingerprint {
        return Err(Error::Usage(UsageError::PublishedTypeMismatch {
            instance: id.to_string(),
            key: key.to_string(),
            stored: stored.shape,
            asked: asked.text.clone(),
        }));
    }
    crate::codec::decode(&stored.payload).map_err(|e| {
        Error::Store(StoreError::decode(
            format!("published key {key:?} of instance {id:?}"),
            e,
        ))
    })
}
