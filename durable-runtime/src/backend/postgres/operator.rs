//! Operator actions on PostgreSQL, each one transaction: a fork (the new
//! instance and the checkpoints it replays), the reopening of a stopped
//! instance (retry, resuming a cancelled one: under the row lock, the epoch
//! moves and the instance is left unowned and runnable), pause and unpause
//! (the `paused` column keeps claims away; the epoch stays), and purge
//! (finished instances deleted with their checkpoints and events, each
//! decided under its row lock).

use std::collections::HashSet;

use crate::backend::{Created, Lease, Notice, Reopen};
use crate::error::{Error, Result};
use crate::records::{CheckpointRecord, InstanceRecord};

use super::Cached;
use super::commit::Cp;
use super::status::{self, READY};
use super::{Inner, decode, encode, io};

/// Instances deleted per statement of a purge.
const PURGE_PAGE: i64 = 256;

impl Inner {
    /// [`create`](Self::create) with `checkpoints` in the same transaction.
    pub(super) async fn create_with(
        &self,
        id: &str,
        record: &InstanceRecord,
        checkpoints: &[CheckpointRecord],
    ) -> Result<Created> {
        if checkpoints.is_empty() {
            return self.create(id, record).await;
        }
        let cps = checkpoints
            .iter()
            .map(|c| Cp::of(id, c))
            .collect::<Result<Vec<Cp>>>()?;
        let me = self.me();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(io("begin a fork"))?;
        let Some(epoch) = self.insert_instance(&tx, id, record, me).await? else {
            drop(tx);
            let existing = self.load(id).await?.ok_or_else(|| {
                Error::Store(crate::error::StoreError::io_message(
                    "create a forked instance",
                    format!("instance {id:?} vanished while it was being created"),
                ))
            })?;
            return Ok(Created::Exists(existing));
        };
        let ids: Vec<&str> = cps.iter().map(|_| id).collect();
        let keys: Vec<&[u8]> = cps.iter().map(|c| c.key.as_slice()).collect();
        let names: Vec<&str> = cps.iter().map(|c| c.name.as_str()).collect();
        let ended: Vec<bool> = cps.iter().map(|c| c.ended_wait).collect();
        let records: Vec<&[u8]> = cps.iter().map(|c| c.bytes.as_slice()).collect();
        tx.execute_cached(
            &self.sql(
                "INSERT INTO {s}.checkpoints (instance_id, key, name, ended_wait, record)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bool[],
                                      $5::bytea[])
                 ON CONFLICT (instance_id, key) DO UPDATE
                   SET record = EXCLUDED.record, ended_wait = EXCLUDED.ended_wait",
            ),
            &[&ids, &keys, &names, &ended, &records],
        )
        .await
        .map_err(io("write the checkpoints of a fork"))?;
        // The state and stream entries published before the fork point
        // (the `set_event` and `write_stream` checkpoints among them).
        for (key, value) in crate::records::published_by(checkpoints) {
            let bytes = encode(&value, id, &format!("published key {key:?}"))?;
            tx.execute_cached(
                &self.sql(
                    "INSERT INTO {s}.published (instance_id, key, record) VALUES ($1, $2, $3)
                     ON CONFLICT (instance_id, key) DO UPDATE SET record = EXCLUDED.record",
                ),
                &[&id, &key, &bytes],
            )
            .await
            .map_err(io("write the published state of a fork"))?;
        }
        for (key, offset, value) in crate::records::streamed_by(checkpoints) {
            let bytes = encode(&value, id, &format!("stream {key:?}"))?;
            tx.execute_cached(
                &self.sql(
                    "INSERT INTO {s}.streams (instance_id, key, \"offset\", record)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (instance_id, key, \"offset\") DO UPDATE
                       SET record = EXCLUDED.record",
                ),
                &[&id, &key, &(offset as i64), &bytes],
            )
            .await
            .map_err(io("write the stream entries of a fork"))?;
        }
        tx.commit().await.map_err(io("commit a fork"))?;
        Ok(Created::New(Lease {
            epoch: epoch as u64,
            owner: me,
        }))
    }

    /// See [`Backend::reopen`](crate::backend::Backend::reopen).
    pub(super) async fn reopen(&self, id: &str, decide: Reopen<'_>) -> Result<bool> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(io("begin a reopening"))?;
        let record = self
            .lock_record(
                &tx,
                id,
                "begin a reopening",
                "lock an instance to reopen it",
            )
            .await?;
        // Read under the lock: every write of an owner committed before is seen.
        let checkpoints = tx
            .query_cached(
                &self.sql("SELECT record FROM {s}.checkpoints WHERE instance_id = $1 ORDER BY key"),
                &[&id],
            )
            .await
            .map_err(io("read the checkpoints of an instance to reopen"))?
            .iter()
            .map(|r| decode(r.get(0), || format!("a checkpoint of {id:?}")))
            .collect::<Result<Vec<CheckpointRecord>>>()?;
        let Some((record, set_aside)) = decide(record, checkpoints)? else {
            return Ok(false);
        };
        let bytes = encode(&record, id, "the instance record")?;
        let keys = set_aside
            .iter()
            .map(|c| Cp::of(id, c).map(|cp| cp.key))
            .collect::<Result<Vec<Vec<u8>>>>()?;
        if !keys.is_empty() {
            tx.execute_cached(
                &self.sql("DELETE FROM {s}.checkpoints WHERE instance_id = $1 AND key = ANY($2)"),
                &[&id, &keys],
            )
            .await
            .map_err(io("set checkpoints aside"))?;
        }
        // Claimed as a wake-up (like an instance whose event arrived), not
        // as a recovery.
        let code = match status::of_state(&record.state) {
            status::RUNNING => READY,
            other => other,
        };
        tx.execute_cached(
            &self.sql(
                "UPDATE {s}.instances
                 SET record = $2, status = $3, finished = $4, updated_ms = $5, paused = $6,
                     epoch = epoch + 1, owner = NULL, blocked_by = NULL, recoveries = 0,
                     park = NULL, wake_at_ms = NULL, updated_at = now()
                 WHERE id = $1",
            ),
            &[
                &id,
                &bytes,
                &code,
                &status::finished(&record.state),
                &status::updated_ms(&record),
                &record.paused_since().is_some(),
            ],
        )
        .await
        .map_err(io("reopen an instance"))?;
        tx.commit().await.map_err(io("commit a reopening"))?;
        self.timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        tracing::info!(durable.instance_id = %id, "instance reopened");
        self.announce(Notice::Ready);
        Ok(true)
    }

    /// See [`Backend::set_paused`](crate::backend::Backend::set_paused).
    pub(super) async fn set_paused(
        &self,
        id: &str,
        paused: bool,
        update: &(dyn Fn(InstanceRecord) -> Option<InstanceRecord> + Send + Sync),
    ) -> Result<bool> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(io("begin a pause"))?;
        let record = self
            .lock_record(&tx, id, "begin a pause", "lock an instance to pause it")
            .await?;
        status::ensure_unfinished(id, &record.state)?;
        let Some(record) = update(record) else {
            return Ok(false);
        };
        let bytes = encode(&record, id, "the instance record")?;
        // The epoch and the owner stay: an owner finishes the step it runs.
        tx.execute_cached(
            &self.sql(
                "UPDATE {s}.instances SET record = $2, updated_ms = $3, paused = $4,
                     updated_at = now()
                 WHERE id = $1",
            ),
            &[&id, &bytes, &status::updated_ms(&record), &paused],
        )
        .await
        .map_err(io("pause or unpause an instance"))?;
        tx.commit()
            .await
            .map_err(io("commit a pause or an unpause"))?;
        tracing::info!(durable.instance_id = %id, durable.paused = paused, "instance paused or unpaused");
        self.announce(Notice::Paused { id: id.to_string() });
        if !paused {
            self.announce(Notice::Ready);
        }
        Ok(true)
    }

    /// Tells this process of each instance this worker owns that was
    /// paused or unpaused since `seen` (the ones found paused last time,
    /// updated): its owner looks at the record.
    pub(super) async fn owned_paused(&self, seen: &mut HashSet<String>) -> Result<()> {
        let conn = self.conn().await?;
        let now: HashSet<String> = conn
            .query_cached(
                &self.sql("SELECT id FROM {s}.instances WHERE owner = $1 AND paused"),
                &[&self.me()],
            )
            .await
            .map_err(io("look for paused instances"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for id in now.symmetric_difference(seen) {
            let _ = self.notices.send(Notice::Paused { id: id.clone() });
        }
        *seen = now;
        Ok(())
    }

    /// See [`Backend::purge`](crate::backend::Backend::purge): a page of
    /// instances at a time, each row locked and its condition checked again
    /// under the lock (one reopened meanwhile no longer passes); their
    /// checkpoints and events go with them, in the same statement (and
    /// what they published, by `ON DELETE CASCADE`).
    pub(super) async fn purge(&self, before_ms: u64) -> Result<u64> {
        let before = before_ms.min(i64::MAX as u64) as i64;
        let conn = self.conn().await?;
        let purge = self.sql(
            "WITH gone AS (
                 DELETE FROM {s}.instances WHERE id IN (
                     SELECT id FROM {s}.instances
                     WHERE finished AND updated_ms < $1
                     ORDER BY updated_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                   AND finished AND updated_ms < $1
                 RETURNING id),
             cps AS (DELETE FROM {s}.checkpoints WHERE instance_id IN (SELECT id FROM gone)),
             evs AS (DELETE FROM {s}.events WHERE instance_id IN (SELECT id FROM gone))
             SELECT count(*) FROM gone",
        );
        let mut purged = 0u64;
        loop {
            let n: i64 = conn
                .query_one(&purge, &[&before, &PURGE_PAGE])
                .await
                .map_err(io("purge finished instances"))?
                .get(0);
            purged += n.max(0) as u64;
            if n < PURGE_PAGE {
                break;
            }
        }
        Ok(purged)
    }
}
