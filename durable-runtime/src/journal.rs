//! The journal: every stored record is encoded into a write, and decoded
//! from a read, here and nowhere else. Above it the engine and the
//! operations deal in typed records; below it the store deals in bytes.
//!
//! Writes go through the group committer (one durable apply for many
//! concurrent batches); reads go to the store directly.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::codec;
use crate::committer::Committer;
use crate::error::{Error, Result, StoreError};
use crate::records::{
    CheckpointRecord, CheckpointState, EventRecord, InstanceRecord, ParkRecord, created_key,
    instance_key, instance_prefix, keyed_key, name_prefix, occurrence_key, recoveries_of,
    recoveries_value,
};
use crate::store::{Batch, Entries, Store, Tree};

/// Typed reads and writes of one store.
pub(crate) struct Journal {
    store: Arc<dyn Store>,
    committer: Committer,
}

impl Journal {
    /// A journal over `store`, with its committer thread started.
    pub(crate) fn start(store: Arc<dyn Store>) -> Result<Journal> {
        let committer = Committer::start(Arc::clone(&store))
            .map_err(|e| StoreError::io("start the committer thread", e))?;
        Ok(Journal { store, committer })
    }

    /// The record of instance `id`, if it exists.
    pub(crate) fn load(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let Some(bytes) = self.store.get(Tree::Instances, &instance_key(id))? else {
            return Ok(None);
        };
        decode(&bytes, || format!("instance {id:?}")).map(Some)
    }

    /// Every checkpoint of instance `id`, in key order.
    pub(crate) fn load_checkpoints(&self, id: &str) -> Result<Vec<CheckpointRecord>> {
        self.store
            .scan_prefix(Tree::Checkpoints, &instance_prefix(id))?
            .into_iter()
            .map(|(_, bytes)| decode(&bytes, || format!("a checkpoint of instance {id:?}")))
            .collect()
    }

    /// The stored count of resumes without progress of unfinished instance `id`.
    pub(crate) fn recoveries(&self, id: &str) -> Result<u32> {
        Ok(self
            .store
            .get(Tree::Active, &instance_key(id))?
            .as_deref()
            .map_or(0, recoveries_of))
    }

    /// Records a new instance: its record, its entry among the unfinished,
    /// its place in the creation-time index, and `checkpoints` (a fork's)
    /// with the state their `set_event`s published and the stream entries
    /// their `write_stream`s appended, in one atomic batch.
    pub(crate) async fn create_with(
        &self,
        id: &str,
        record: &InstanceRecord,
        checkpoints: &[CheckpointRecord],
    ) -> Result<()> {
        let batch = self.create_batch(id, record, checkpoints)?;
        self.commit(batch).await
    }

    /// Records every new instance of `items` in one atomic batch (one
    /// durable write), as [`create_with`](Self::create_with) does one.
    pub(crate) async fn create_many(&self, items: &[(&str, &InstanceRecord)]) -> Result<()> {
        let mut all = Batch::new();
        for (id, record) in items {
            all.ops.extend(self.create_batch(id, record, &[])?.ops);
        }
        self.commit(all).await
    }

    fn create_batch(
        &self,
        id: &str,
        record: &InstanceRecord,
        checkpoints: &[CheckpointRecord],
    ) -> Result<Batch> {
        let mut batch = self.record_batch(id, record, Some(0))?;
        for c in checkpoints {
            let key = match &c.key {
                Some((key, _)) => keyed_key(id, &c.name, key),
                None => occurrence_key(id, &c.name, c.occurrence),
            };
            batch.put(
                Tree::Checkpoints,
                key,
                encode(c, id, "a checkpoint record")?,
            );
        }
        for (key, value) in crate::records::published_by(checkpoints) {
            batch.put(
                Tree::Published,
                sub_key(id, &key),
                encode(&value, id, &format!("published key {key:?}"))?,
            );
        }
        for (key, offset, value) in crate::records::streamed_by(checkpoints) {
            batch.put(
                Tree::Streams,
                stream_key(id, &key, offset),
                encode(&value, id, &format!("stream {key:?}"))?,
            );
        }
        batch.put(
            Tree::Created,
            created_key(record.created_at_ms, id),
            Vec::new(),
        );
        Ok(batch)
    }

    /// Writes the instance record durably, with its entry in `Active`: the
    /// count of resumes without progress while unfinished, `None` to remove
    /// it (and any park record) once finished.
    pub(crate) async fn commit_record(
        &self,
        id: &str,
        record: &InstanceRecord,
        active: Option<u32>,
    ) -> Result<()> {
        let batch = self.record_batch(id, record, active)?;
        self.commit(batch).await
    }

    fn record_batch(
        &self,
        id: &str,
        record: &InstanceRecord,
        active: Option<u32>,
    ) -> Result<Batch> {
        let bytes = encode(record, id, "the instance record")?;
        let mut batch = Batch::new();
        batch.put(Tree::Instances, instance_key(id), bytes);
        match active {
            Some(recoveries) => {
                batch.put(Tree::Active, instance_key(id), recoveries_value(recoveries));
            }
            None => {
                batch.delete(Tree::Active, instance_key(id));
                batch.delete(Tree::Timers, instance_key(id));
            }
        }
        Ok(batch)
    }

    /// Writes the record of a reopened instance, unfinished with no resumes
    /// without progress, and deletes the checkpoints `set_aside`, in one
    /// atomic batch.
    pub(crate) async fn reopen(
        &self,
        id: &str,
        record: &InstanceRecord,
        set_aside: &[CheckpointRecord],
    ) -> Result<()> {
        let mut batch = self.record_batch(id, record, Some(0))?;
        batch.delete(Tree::Timers, instance_key(id));
        for c in set_aside {
            let key = match &c.key {
                Some((key, _)) => keyed_key(id, &c.name, key),
                None => occurrence_key(id, &c.name, c.occurrence),
            };
            batch.delete(Tree::Checkpoints, key);
        }
        self.commit(batch).await
    }

    /// Up to `limit` entries of the creation index before `before` (newest
    /// first), as (key, id).
    pub(crate) fn created_before(&self, before: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .store
            .scan_rev(Tree::Created, Some(before), limit)?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    /// Deletes finished instance `id` created at `created_at_ms`: record,
    /// checkpoints, events, park record and index entries, in one batch.
    pub(crate) async fn purge(&self, id: &str, created_at_ms: u64) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(Tree::Instances, instance_key(id));
        batch.delete(Tree::Active, instance_key(id));
        batch.delete(Tree::Timers, instance_key(id));
        batch.delete(Tree::Created, created_key(created_at_ms, id));
        let prefix = instance_prefix(id);
        for tree in [
            Tree::Checkpoints,
            Tree::Events,
            Tree::Published,
            Tree::SendKeys,
            Tree::Streams,
        ] {
            for (key, _) in self.store.scan_prefix(tree, &prefix)? {
                batch.delete(tree, key);
            }
        }
        self.commit(batch).await
    }

    /// Stores `record` as the checkpoint of its (name, occurrence); with
    /// `progress`, also sets the count of resumes without progress back to
    /// zero in the same atomic batch.
    pub(crate) async fn checkpoint(
        &self,
        id: &str,
        record: &CheckpointRecord,
        progress: bool,
    ) -> Result<()> {
        let value = encode(record, id, "a checkpoint record")?;
        let mut batch = Batch::new();
        let key = match &record.key {
            Some((key, _)) => keyed_key(id, &record.name, key),
            None => occurrence_key(id, &record.name, record.occurrence),
        };
        batch.put(Tree::Checkpoints, key, value);
        if progress {
            batch.put(Tree::Active, instance_key(id), recoveries_value(0));
        }
        self.commit(batch).await
    }

    /// Records what parked instance `id` waits for.
    pub(crate) async fn park(&self, id: &str, park: &ParkRecord) -> Result<()> {
        let value = encode(park, id, "a park record")?;
        let mut batch = Batch::new();
        batch.put(Tree::Timers, instance_key(id), value);
        self.commit(batch).await
    }

    /// Event `name` number `seq` of instance `id`, if it was sent.
    pub(crate) fn event(&self, id: &str, name: &str, seq: u32) -> Result<Option<EventRecord>> {
        let Some(bytes) = self
            .store
            .get(Tree::Events, &occurrence_key(id, name, seq))?
        else {
            return Ok(None);
        };
        decode(&bytes, || {
            format!("event {name:?} (number {seq}) of instance {id:?}")
        })
        .map(Some)
    }

    /// Whether occurrence `occurrence` of wait `name` of instance `id`
    /// ended by its timeout.
    pub(crate) fn wait_timed_out(&self, id: &str, name: &str, occurrence: u32) -> Result<bool> {
        let Some(bytes) = self
            .store
            .get(Tree::Checkpoints, &occurrence_key(id, name, occurrence))?
        else {
            return Ok(false);
        };
        Ok(codec::decode::<CheckpointRecord>(&bytes)
            .is_ok_and(|c| matches!(c.state, CheckpointState::TimedOut { .. })))
    }

    /// Whether event `name` number `seq` of instance `id` was sent.
    pub(crate) fn has_event(&self, id: &str, name: &str, seq: u32) -> Result<bool> {
        Ok(self
            .store
            .get(Tree::Events, &occurrence_key(id, name, seq))?
            .is_some())
    }

    /// The number the next event `name` sent to `id` gets: after every event
    /// of the name already sent, and after every wait of the name that
    /// already ended (received or timed out).
    pub(crate) fn next_event_seq(&self, id: &str, name: &str) -> Result<u32> {
        let events = self
            .store
            .scan_prefix(Tree::Events, &name_prefix(id, name))?
            .len();
        let ended_waits = self
            .store
            .scan_prefix(Tree::Checkpoints, &name_prefix(id, name))?
            .iter()
            .filter(|(_, v)| {
                codec::decode::<CheckpointRecord>(v).is_ok_and(|c| {
                    matches!(
                        c.state,
                        CheckpointState::Received { .. } | CheckpointState::TimedOut { .. }
                    )
                })
            })
            .count();
        Ok(u32::try_from(events.max(ended_waits)).unwrap_or(u32::MAX))
    }

    /// Stores event `name` number `seq` of instance `id`, durably, with
    /// the idempotency key it was sent with (if any) in the same batch.
    pub(crate) async fn put_event(
        &self,
        id: &str,
        name: &str,
        seq: u32,
        event: &EventRecord,
        send_key: Option<&str>,
    ) -> Result<()> {
        let value = encode(event, id, &format!("event {name:?}"))?;
        let mut batch = Batch::new();
        batch.put(Tree::Events, occurrence_key(id, name, seq), value);
        if let Some(key) = send_key {
            let at = encode(&(name, seq), id, "the key of an event")?;
            batch.put(Tree::SendKeys, sub_key(id, key), at);
        }
        self.commit(batch).await
    }

    /// Whether an event was stored for instance `id` with idempotency key `key`.
    pub(crate) fn has_send_key(&self, id: &str, key: &str) -> Result<bool> {
        Ok(self.store.get(Tree::SendKeys, &sub_key(id, key))?.is_some())
    }

    /// Stores `record` (the checkpoint of a `set_event`) and `value` as the
    /// published value of `key` of instance `id`, and sets the count of
    /// resumes without progress back to zero, in one atomic batch.
    pub(crate) async fn publish(
        &self,
        id: &str,
        record: &CheckpointRecord,
        key: &str,
        value: &EventRecord,
    ) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Tree::Checkpoints,
            occurrence_key(id, &record.name, record.occurrence),
            encode(record, id, "a checkpoint record")?,
        );
        batch.put(Tree::Active, instance_key(id), recoveries_value(0));
        batch.put(
            Tree::Published,
            sub_key(id, key),
            encode(value, id, &format!("published key {key:?}"))?,
        );
        self.commit(batch).await
    }

    /// Stores `record` (the checkpoint of a `write_stream`) and `value` as
    /// entry `offset` of stream `key` of instance `id`, and sets the count
    /// of resumes without progress back to zero, in one atomic batch.
    pub(crate) async fn append(
        &self,
        id: &str,
        record: &CheckpointRecord,
        (key, offset): (&str, u64),
        value: &EventRecord,
    ) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Tree::Checkpoints,
            occurrence_key(id, &record.name, record.occurrence),
            encode(record, id, "a checkpoint record")?,
        );
        batch.put(Tree::Active, instance_key(id), recoveries_value(0));
        batch.put(
            Tree::Streams,
            stream_key(id, key, offset),
            encode(value, id, &format!("stream {key:?}"))?,
        );
        self.commit(batch).await
    }

    /// Up to `limit` entries of stream `key` of instance `id` from offset
    /// `from` on: (offset, value), in offset order.
    pub(crate) fn stream(
        &self,
        id: &str,
        key: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventRecord)>> {
        let prefix = name_prefix(id, key);
        let mut entries = Vec::new();
        for (k, bytes) in self.store.scan_prefix(Tree::Streams, &prefix)? {
            let offset = k
                .get(prefix.len()..)
                .and_then(|rest| rest.try_into().ok())
                .map(u64::from_be_bytes);
            let Some(offset) = offset else { continue };
            if offset < from {
                continue;
            }
            let value = decode(&bytes, || {
                format!("entry {offset} of stream {key:?} of instance {id:?}")
            })?;
            entries.push((offset, value));
            if entries.len() >= limit {
                break;
            }
        }
        Ok(entries)
    }

    /// The value instance `id` published under `key`, if any.
    pub(crate) fn published(&self, id: &str, key: &str) -> Result<Option<EventRecord>> {
        let Some(bytes) = self.store.get(Tree::Published, &sub_key(id, key))? else {
            return Ok(None);
        };
        decode(&bytes, || {
            format!("published key {key:?} of instance {id:?}")
        })
        .map(Some)
    }

    /// Every row of `tree` (a table of store-wide records such as
    /// schedules), in key order.
    pub(crate) fn rows(&self, tree: Tree) -> Result<Entries> {
        Ok(self.store.scan_prefix(tree, &[])?)
    }

    /// Row `key` of `tree`, if present.
    pub(crate) fn row(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.store.get(tree, key)?)
    }

    /// Puts (`Some`) or deletes (`None`) row `key` of `tree`, durably.
    pub(crate) async fn put_row(
        &self,
        tree: Tree,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<()> {
        let mut batch = Batch::new();
        match value {
            Some(value) => batch.put(tree, key, value),
            None => batch.delete(tree, key),
        };
        self.commit(batch).await
    }

    /// Every unfinished instance: (id bytes, resumes without progress).
    pub(crate) fn active(&self) -> Result<Vec<(Vec<u8>, u32)>> {
        active_of(&*self.store)
    }

    /// Every unfinished instance of `store` and every park record (a record
    /// that does not decode is left out: its instance is then resumed
    /// instead of parked). Read before the journal starts writing.
    pub(crate) fn unfinished_of(store: &dyn Store) -> Result<(Unfinished, Parks)> {
        let parks = store
            .scan_prefix(Tree::Timers, &[])?
            .into_iter()
            .filter_map(|(k, v)| codec::decode::<ParkRecord>(&v).ok().map(|p| (k, p)))
            .collect();
        Ok((active_of(store)?, parks))
    }

    /// Up to `limit` entries of the creation-time index, newest first,
    /// strictly before `before` (a key of that index) when given.
    pub(crate) fn created_page(&self, before: Option<&[u8]>, limit: usize) -> Result<Entries> {
        Ok(self.store.scan_rev(Tree::Created, before, limit)?)
    }

    /// Builds the creation-time index for instances recorded before it
    /// existed (a store written by an earlier version). Does nothing when
    /// the index already covers every instance.
    pub(crate) async fn index_existing(&self) -> Result<()> {
        const DONE: &[u8] = b"created_index";
        if self.store.get(Tree::Meta, DONE)?.is_some() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for (key, bytes) in self.store.scan_prefix(Tree::Instances, &[])? {
            let id = String::from_utf8_lossy(&key).into_owned();
            if let Ok(record) = codec::decode::<InstanceRecord>(&bytes) {
                batch.put(
                    Tree::Created,
                    created_key(record.created_at_ms, &id),
                    Vec::new(),
                );
            }
        }
        batch.put(Tree::Meta, DONE.to_vec(), vec![1]);
        self.commit(batch).await
    }

    /// The first error the store returned, after which nothing more is written.
    /// The manifest stored under `hash`, if the store has it and it decodes.
    pub(crate) fn manifest(&self, hash: u64) -> Option<crate::manifest::Manifest> {
        let bytes = self
            .store
            .get(Tree::Meta, &crate::manifest::manifest_key(hash))
            .ok()??;
        codec::decode(&bytes).ok()
    }

    /// Stores each of `manifests` the store does not hold yet.
    pub(crate) async fn store_manifests(
        &self,
        manifests: &[&crate::manifest::Manifest],
    ) -> Result<()> {
        let mut batch = Batch::new();
        for manifest in manifests {
            let key = crate::manifest::manifest_key(manifest.hash());
            if self.store.get(Tree::Meta, &key)?.is_none() {
                batch.put(Tree::Meta, key, encode(*manifest, "", "a manifest")?);
            }
        }
        if batch.ops.is_empty() {
            return Ok(());
        }
        self.commit(batch).await
    }

    /// The events stored for instance `id`: name, fingerprint and shape.
    pub(crate) fn events_of(&self, id: &str) -> Result<Vec<(String, u64, String)>> {
        let prefix = instance_prefix(id);
        Ok(self
            .store
            .scan_prefix(Tree::Events, &prefix)?
            .into_iter()
            .filter_map(|(key, value)| {
                let event: EventRecord = codec::decode(&value).ok()?;
                let rest = key.strip_prefix(prefix.as_slice())?;
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let name = String::from_utf8(rest.get(4..4 + len)?.to_vec()).ok()?;
                Some((name, event.fingerprint, event.shape))
            })
            .collect())
    }

    /// Every event stored for instance `id`: name, number, record (feature
    /// (the kit's export).
    #[cfg(feature = "testing")]
    pub(crate) fn events_with_payloads(&self, id: &str) -> Result<Vec<(String, u32, EventRecord)>> {
        let prefix = instance_prefix(id);
        let mut events = Vec::new();
        for (key, value) in self.store.scan_prefix(Tree::Events, &prefix)? {
            let what = || format!("an event of instance {id:?}");
            let event: EventRecord = decode(&value, what)?;
            let parsed = key.strip_prefix(prefix.as_slice()).and_then(|rest| {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let name = String::from_utf8(rest.get(4..4 + len)?.to_vec()).ok()?;
                let seq = u32::from_be_bytes(rest.get(4 + len..8 + len)?.try_into().ok()?);
                Some((name, seq))
            });
            let Some((name, seq)) = parsed else {
                return Err(Error::Store(StoreError::Decode {
                    what: what(),
                    reason: "malformed key".into(),
                    source: None,
                }));
            };
            events.push((name, seq, event));
        }
        Ok(events)
    }

    pub(crate) fn failure(&self) -> Option<StoreError> {
        self.committer.failure()
    }

    /// Counters of the group committer.
    #[cfg(feature = "hooks")]
    pub(crate) fn stats(&self) -> &crate::committer::CommitStats {
        &self.committer.stats
    }

    /// Writes everything queued, then stops writing.
    pub(crate) async fn close(&self) {
        self.committer.close().await;
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        self.committer.commit(batch).await.map_err(Error::from)
    }
}

/// Key of one key of one instance in `Published` and `SendKeys`:
/// `len(id) id key`.
fn sub_key(id: &str, key: &str) -> Vec<u8> {
    let mut out = instance_prefix(id);
    out.extend_from_slice(key.as_bytes());
    out
}

/// Key of one stream entry in `Streams`: `len(id) id len(key) key offset`
/// (the offset big-endian, so entries sort by it).
fn stream_key(id: &str, key: &str, offset: u64) -> Vec<u8> {
    let mut out = name_prefix(id, key);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// Unfinished instances: (id bytes, resumes without progress).
pub(crate) type Unfinished = Vec<(Vec<u8>, u32)>;

/// Park records by instance key.
pub(crate) type Parks = HashMap<Vec<u8>, ParkRecord>;

fn active_of(store: &dyn Store) -> Result<Unfinished> {
    Ok(store
        .scan_prefix(Tree::Active, &[])?
        .into_iter()
        .map(|(k, v)| (k, recoveries_of(&v)))
        .collect())
}

fn encode<T: Serialize>(value: &T, id: &str, what: &str) -> Result<Vec<u8>> {
    codec::encode(value).map_err(|reason| {
        Error::Replay(crate::error::ReplayError::Encode {
            instance: id.to_string(),
            what: what.to_string(),
            reason,
        })
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T> {
    codec::decode(bytes).map_err(|e| Error::Store(StoreError::decode(what(), e)))
}

/// Decodes a user value (a step outcome, an event payload, a workflow's
/// input or output); the error is the decoder's complaint.
pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<T, String> {
    codec::decode(bytes).map_err(|e| e.to_string())
}
