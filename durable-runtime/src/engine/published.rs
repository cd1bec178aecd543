//! Reading published state (`get_event`, with an optional wait woken by
//! the backend's notices) and idempotent events (`send_event_with_key`).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;

use crate::backend::Notice;
use crate::error::{Error, Result, StoreError, UsageError};
use crate::ids::validate_id;

use super::Engine;

/// How often a waiting `get_event_timeout` reads again without a notice (a
/// hint across processes may be lost; one in this process is not).
const POLL: Duration = Duration::from_millis(500);

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
        let Some(stored) = self.core.services.backend.published(id, key).await? else {
            return Ok(None);
        };
        let asked = crate::manifest::shape_of::<T>();
        if stored.fingerprint != asked.fingerprint {
            return Err(Error::Usage(UsageError::PublishedTypeMismatch {
                instance: id.to_string(),
                key: key.to_string(),
                stored: stored.shape,
                asked: asked.text.clone(),
            }));
        }
        crate::codec::decode(&stored.payload)
            .map(Some)
            .map_err(|e| {
                Error::Store(StoreError::decode(
                    format!("published key {key:?} of instance {id:?}"),
                    e,
                ))
            })
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
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first read: a value published between the
        // read and the wait still rings.
        let mut notices = self.core.services.backend.subscribe();
        loop {
            if let Some(value) = self.get_event(id, key).await? {
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
