//! Plain reads (records, checkpoints, events, manifests), the manifest
//! store, and listings paged in SQL.

use crate::error::Result;
use crate::listing::{Cursor, InstanceSummary, ListFilter, Page};
use crate::manifest::Manifest;
use crate::records::{
    CheckpointRecord, EventRecord, InstanceRecord, ParkRecord, created_key, id_of_created_key,
};
use crate::time::to_ms;

use super::Cached;
use super::{Inner, decode, encode, io, status};

impl Inner {
    pub(super) async fn load(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt_cached(
                &self.sql("SELECT record FROM {s}.instances WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(io("read an instance"))?;
        row.map(|r| decode(r.get(0), || format!("instance {id:?}")))
            .transpose()
    }

    pub(super) async fn park_of(&self, id: &str) -> Result<Option<ParkRecord>> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt_cached(
                &self.sql(&format!(
                    "SELECT park FROM {{s}}.instances WHERE id = $1 AND status IN ({}, {})",
                    status::SLEEPING,
                    status::WAITING
                )),
                &[&id],
            )
            .await
            .map_err(io("read a park record"))?;
        match row.and_then(|r| r.get::<_, Option<Vec<u8>>>(0)) {
            Some(bytes) => decode(&bytes, || format!("the park record of {id:?}")).map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn checkpoints(&self, id: &str) -> Result<Vec<CheckpointRecord>> {
        let conn = self.conn().await?;
        conn.query_cached(
            &self.sql("SELECT record FROM {s}.checkpoints WHERE instance_id = $1 ORDER BY key"),
            &[&id],
        )
        .await
        .map_err(io("read checkpoints"))?
        .iter()
        .map(|r| decode(r.get(0), || format!("a checkpoint of instance {id:?}")))
        .collect()
    }

    pub(super) async fn event(
        &self,
        id: &str,
        name: &str,
        seq: u32,
    ) -> Result<Option<EventRecord>> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt_cached(
                &self.sql(
                    "SELECT record FROM {s}.events WHERE instance_id = $1 AND name = $2 AND seq = $3",
                ),
                &[&id, &name, &(seq as i32)],
            )
            .await
            .map_err(io("read an event"))?;
        row.map(|r| {
            decode(r.get(0), || {
                format!("event {name:?} (number {seq}) of instance {id:?}")
            })
        })
        .transpose()
    }

    pub(super) async fn events_of(&self, id: &str) -> Result<Vec<(String, u64, String)>> {
        let conn = self.conn().await?;
        let rows = conn
            .query_cached(
                &self.sql(
                    "SELECT name, record FROM {s}.events WHERE instance_id = $1
                     ORDER BY octet_length(name), name, seq",
                ),
                &[&id],
            )
            .await
            .map_err(io("read events"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let event: EventRecord = crate::codec::decode(r.get(1)).ok()?;
                Some((r.get(0), event.fingerprint, event.shape))
            })
            .collect())
    }

    #[cfg(feature = "testing")]
    pub(super) async fn event_records(&self, id: &str) -> Result<Vec<(String, u32, EventRecord)>> {
        let conn = self.conn().await?;
        let rows = conn
            .query_cached(
                &self.sql(
                    "SELECT name, seq, record FROM {s}.events WHERE instance_id = $1
                     ORDER BY octet_length(name), name, seq",
                ),
                &[&id],
            )
            .await
            .map_err(io("read events"))?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0);
                let seq: i32 = r.get(1);
                let event: EventRecord =
                    decode(r.get(2), || format!("event {name:?} of instance {id:?}"))?;
                Ok((name, seq as u32, event))
            })
            .collect()
    }

    pub(super) async fn manifest(&self, hash: u64) -> Result<Option<Manifest>> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt_cached(
                &self.sql("SELECT manifest FROM {s}.manifests WHERE hash = $1"),
                &[&(hash as i64)],
            )
            .await
            .map_err(io("read a manifest"))?;
        // As in an embedded store, a manifest that does not decode is absent.
        Ok(row.and_then(|r| crate::codec::decode(r.get(0)).ok()))
    }

    /// Stores each of `manifests` not stored before (by this process).
    pub(super) async fn store_manifests(&self, manifests: &[&Manifest]) -> Result<()> {
        let manifests: Vec<(u64, &Manifest)> = {
            let stored = self
                .manifests_stored
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            manifests
                .iter()
                .map(|m| (m.hash(), *m))
                .filter(|(hash, _)| !stored.contains(hash))
                .collect()
        };
        if manifests.is_empty() {
            return Ok(());
        }
        let hashes: Vec<i64> = manifests.iter().map(|(hash, _)| *hash as i64).collect();
        let bytes = manifests
            .iter()
            .map(|(_, m)| encode(*m, "", "a manifest"))
            .collect::<Result<Vec<_>>>()?;
        let conn = self.conn().await?;
        conn.execute_cached(
            &self.sql(
                "INSERT INTO {s}.manifests (hash, manifest)
                 SELECT * FROM unnest($1::int8[], $2::bytea[]) ON CONFLICT (hash) DO NOTHING",
            ),
            &[&hashes, &bytes],
        )
        .await
        .map_err(io("store manifests"))?;
        self.manifests_stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(manifests.iter().map(|(hash, _)| *hash));
        Ok(())
    }

    /// One page, newest first by (creation time, id), every condition of
    /// `filter` applied in SQL.
    pub(super) async fn list(&self, filter: &ListFilter) -> Result<Page> {
        let (after_ms, before_ms) = filter.created_ms();
        let statuses: Vec<i16> = filter
            .statuses
            .iter()
            .flat_map(|k| status::codes(*k).iter().copied())
            .collect();
        let cursor = filter.after.as_ref().and_then(|c| {
            let ms = u64::from_be_bytes(c.0.get(..8)?.try_into().ok()?);
            Some((ms as i64, id_of_created_key(&c.0)?.to_string()))
        });
        let limit = filter.limit.max(1);
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &self.sql(
                    "SELECT id, status, record, park, created_at_ms FROM {s}.instances
                     WHERE ($1::text IS NULL OR workflow = $1)
                       AND created_at_ms >= $2
                       AND ($3::int8 IS NULL OR created_at_ms < $3)
                       AND ($4::int8 IS NULL OR updated_ms >= $4)
                       AND ($5::int8 IS NULL OR updated_ms < $5)
                       AND (cardinality($6::int2[]) = 0
                            OR (CASE WHEN paused AND NOT finished THEN -1::int2
                                WHEN queued AND NOT finished THEN -2::int2
                                ELSE status END) = ANY($6))
                       AND ($10::text IS NULL OR queue = $10)
                       AND ($7::int8 IS NULL OR (created_at_ms, id) < ($7, $8::text))
                     ORDER BY created_at_ms DESC, id DESC
                     LIMIT $9",
                ),
                &[
                    &filter.workflow,
                    &(after_ms as i64),
                    &before_ms.map(|b| b as i64),
                    &filter.updated_after.map(|t| to_ms(t) as i64),
                    &filter.updated_before.map(|t| to_ms(t) as i64),
                    &statuses,
                    &cursor.as_ref().map(|c| c.0),
                    &cursor.as_ref().map_or("", |c| c.1.as_str()),
                    &((limit + 1).min(i64::MAX as usize) as i64),
                    &filter.queue,
                ],
            )
            .await
            .map_err(io("list instances"))?;
        let more = rows.len() > limit;
        let mut instances = Vec::with_capacity(limit);
        let mut last = None;
        for row in rows.iter().take(limit) {
            let id: String = row.get(0);
            let code: i16 = row.get(1);
            let created: i64 = row.get(4);
            last = Some(created_key(created as u64, &id));
            // Unreadable instances are left out of listings.
            let Ok(record) = decode::<InstanceRecord>(row.get(2), String::new) else {
                continue;
            };
            let park = row
                .get::<_, Option<&[u8]>>(3)
                .and_then(|b| crate::codec::decode::<ParkRecord>(b).ok());
            let status = status::status(code, &record, park.as_ref());
            instances.push(InstanceSummary::of(id, &record, status));
        }
        Ok(Page {
            instances,
            next: if more { last.map(Cursor) } else { None },
        })
    }
}
