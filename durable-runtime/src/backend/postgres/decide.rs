//! Decisions about an instance from any process, each one transaction
//! holding the instance's row lock: an event (its check, its number, the
//! wake-up of a parked instance) and a cancellation (the epoch moves, so
//! the owner's later writes are refused).

use crate::backend::{EventCheck, Notice};
use crate::error::{Error, Result, UsageError};
use crate::records::{EventRecord, InstanceRecord, ParkRecord};

use super::Cached;
use super::status::{self, READY, SLEEPING, WAITING};
use super::{Inner, decode, encode, io};

impl Inner {
    /// Stores an event (see `Backend::send_event`); with `key`, nothing
    /// is done (`None`) when an event was stored with that key before.
    pub(super) async fn send_event(
        &self,
        id: &str,
        name: &str,
        event: EventRecord,
        check: EventCheck<'_>,
        key: Option<&str>,
    ) -> Result<Option<u32>> {
        let bytes = encode(&event, id, &format!("event {name:?}"))?;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(io("begin an event"))?;
        let prepared = async {
            let lock =
                self.sql("SELECT record, park, status FROM {s}.instances WHERE id = $1 FOR UPDATE");
            let keyed = self.sql("SELECT 1 FROM {s}.send_keys WHERE instance_id = $1 AND key = $2");
            let count = self.sql(
                "SELECT (SELECT count(*) FROM {s}.events WHERE instance_id = $1 AND name = $2),
                        (SELECT count(*) FROM {s}.checkpoints
                         WHERE instance_id = $1 AND name = $2 AND ended_wait)",
            );
            Ok::<_, tokio_postgres::Error>((
                tx.prepare_cached(&lock).await?,
                tx.prepare_cached(&keyed).await?,
                tx.prepare_cached(&count).await?,
            ))
        };
        let (lock, keyed, count) = prepared.await.map_err(io("begin an event"))?;
        // One round trip: the settings, the row lock, the key's lookup and
        // the count go out pipelined, in this order. Each statement's
        // snapshot is taken when the one before has run: the lookup and the
        // count see every write that committed before the lock was granted
        // (a concurrent send with the same key waits for this one and then
        // finds its key; the count sees every write of the owner).
        let settings = self.tx_settings();
        let by_id: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let by_name: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &name];
        let (set, row, seen, counts) = tokio::join!(
            tx.batch_execute(&settings),
            tx.query_opt(&lock, &by_id),
            async {
                match key {
                    Some(key) => tx
                        .query_opt(&keyed, &[&id, &key])
                        .await
                        .map(|r| r.is_some()),
                    None => Ok(false),
                }
            },
            tx.query_one(&count, &by_name),
        );
        set.map_err(io("begin an event"))?;
        let row = row.map_err(io("lock an instance for an event"))?;
        let seen = seen.map_err(io("look up the key of an event"))?;
        let counts = counts.map_err(io("number an event"))?;
        let Some(row) = row else {
            return Err(Error::Usage(UsageError::NotFound { id: id.to_string() }));
        };
        let record: InstanceRecord = decode(row.get(0), || format!("instance {id:?}"))?;
        if seen {
            return Ok(None);
        }
        status::ensure_unfinished(id, &record.state)?;
        let code: i16 = row.get(2);
        let events: i64 = counts.get(0);
        let ended: i64 = counts.get(1);
        let seq = u32::try_from(events.max(ended)).unwrap_or(u32::MAX);
        let park: Option<ParkRecord> = match row.get::<_, Option<&[u8]>>(1) {
            Some(bytes) if code == SLEEPING || code == WAITING => {
                Some(decode(bytes, || format!("the park record of {id:?}"))?)
            }
            _ => None,
        };
        let wait = park.as_ref().and_then(|p| {
            p.conds
                .iter()
                .find(|c| c.name == name && c.occurrence == seq && c.event_type.is_some())
        });
        // Whether the wait this event's number follows timed out.
        let timed_out_before = match seq.checked_sub(1) {
            Some(before) => tx
                .query_opt_cached(
                    &self.sql(
                        "SELECT record FROM {s}.checkpoints WHERE instance_id = $1 AND key = $2",
                    ),
                    &[&id, &crate::records::occurrence_key(id, name, before)],
                )
                .await
                .map_err(io("read the wait before an event"))?
                .and_then(|r| {
                    crate::codec::decode::<crate::records::CheckpointRecord>(r.get(0)).ok()
                })
                .is_some_and(|c| {
                    matches!(c.state, crate::records::CheckpointState::TimedOut { .. })
                }),
            None => false,
        };
        check(
            &record,
            seq,
            wait.and_then(|w| w.event_type.as_deref()),
            timed_out_before,
        )?;
        tx.execute_cached(
            &self.sql(
                "INSERT INTO {s}.events (instance_id, name, seq, record) VALUES ($1, $2, $3, $4)",
            ),
            &[&id, &name, &(seq as i32), &bytes],
        )
        .await
        .map_err(io("store an event"))?;
        if let Some(key) = key {
            tx.execute_cached(
                &self.sql(
                    "INSERT INTO {s}.send_keys (instance_id, key, name, seq) VALUES ($1, $2, $3, $4)",
                ),
                &[&id, &key, &name, &(seq as i32)],
            )
            .await
            .map_err(io("store the key of an event"))?;
        }
        let woken = wait.is_some();
        if woken {
            tx.execute_cached(
                &self.sql(&format!(
                    "UPDATE {{s}}.instances SET status = {READY}, park = NULL, wake_at_ms = NULL,
                         updated_at = now()
                     WHERE id = $1"
                )),
                &[&id],
            )
            .await
            .map_err(io("wake an instance"))?;
        }
        tx.commit().await.map_err(io("commit an event"))?;
        tracing::info!(
            durable.instance_id = %id,
            durable.event = %name,
            durable.occurrence = seq,
            durable.woken = woken,
            "event stored"
        );
        self.announce(Notice::Event {
            id: id.to_string(),
            name: name.to_string(),
        });
        if woken {
            self.announce(Notice::Ready);
        }
        Ok(Some(seq))
    }

    /// In `tx`: the transaction's settings and the lock of instance `id`'s
    /// row, pipelined in one round trip, and its record as read under the
    /// lock (`NotFound` if there is no such instance). `begin` and `lock`
    /// name the operation in errors.
    pub(super) async fn lock_record(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        id: &str,
        begin: &'static str,
        lock: &'static str,
    ) -> Result<InstanceRecord> {
        let statement = tx
            .prepare_cached(&self.sql("SELECT record FROM {s}.instances WHERE id = $1 FOR UPDATE"))
            .await
            .map_err(io(begin))?;
        let settings = self.tx_settings();
        let by_id: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let (set, row) = tokio::join!(
            tx.batch_execute(&settings),
            tx.query_opt(&statement, &by_id)
        );
        set.map_err(io(begin))?;
        let Some(row) = row.map_err(io(lock))? else {
            return Err(Error::Usage(UsageError::NotFound { id: id.to_string() }));
        };
        decode(row.get(0), || format!("instance {id:?}"))
    }

    pub(super) async fn cancel(
        &self,
        id: &str,
        update: &(dyn Fn(InstanceRecord) -> InstanceRecord + Send + Sync),
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(io("begin a cancel"))?;
        let record = self
            .lock_record(&tx, id, "begin a cancel", "lock an instance to cancel it")
            .await?;
        status::ensure_unfinished(id, &record.state)?;
        let record = update(record);
        let bytes = encode(&record, id, "the instance record")?;
        tx.execute_cached(
            &self.sql(
                "UPDATE {s}.instances
                 SET record = $2, status = $3, finished = $4, updated_ms = $5,
                     epoch = epoch + 1, owner = NULL, park = NULL, wake_at_ms = NULL,
                     updated_at = now()
                 WHERE id = $1",
            ),
            &[
                &id,
                &bytes,
                &status::of_state(&record.state),
                &status::finished(&record.state),
                &status::updated_ms(&record),
            ],
        )
        .await
        .map_err(io("cancel an instance"))?;
        tx.commit().await.map_err(io("commit a cancel"))?;
        self.timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        tracing::info!(durable.instance_id = %id, "instance cancelled");
        self.announce(Notice::Cancelled { id: id.to_string() });
        self.announce(Notice::Ended { id: id.to_string() });
        Ok(())
    }
}
