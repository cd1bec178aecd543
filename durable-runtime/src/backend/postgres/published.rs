//! Published state and streams: a `set_event` or `write_stream` is one
//! fenced, idempotent statement (the checkpoint and the value in one),
//! outside the group commit; a read is a plain select, from any process.

use std::time::Duration;

use crate::backend::{Committed, Lease, Notice};
use crate::error::{Error, InstanceError, Result, UsageError};
use crate::records::{CheckpointRecord, EventRecord};

use super::Cached;
use super::commit::{Cp, MIN_ATTEMPTS};
use super::group::retryable;
use super::{Inner, decode, encode, io};

/// What a fenced write stores beside its checkpoint.
pub(super) enum Beside<'a> {
    /// The value of a published key.
    Value { key: &'a str },
    /// An entry of a stream.
    Entry { key: &'a str, offset: u64 },
}

impl Inner {
    /// Writes the checkpoint `record` of a `set_event` or `write_stream`
    /// and `value` (the published value of a key, or a stream entry) for
    /// instance `id`, fenced by `lease`: one statement, so one atomic
    /// write. Its outcome is unknown only when the connection broke, and
    /// retrying is safe then: it writes the same rows under the same fence
    /// (refused with `LeaseLost` if the lease moved meanwhile; the new owner
    /// replays the checkpoint or writes again).
    pub(super) async fn publish(
        &self,
        id: &str,
        lease: Lease,
        record: &CheckpointRecord,
        beside: Beside<'_>,
        value: &EventRecord,
    ) -> Result<Committed> {
        let cp = Cp::of(id, record)?;
        let (key, offset, table) = match beside {
            Beside::Value { key } => (key, None, "published"),
            Beside::Entry { key, offset } => (key, Some(offset as i64), "stream"),
        };
        let bytes = encode(value, id, &format!("{table} {key:?}"))?;
        let write = match offset {
            None => {
                "INSERT INTO {s}.published (instance_id, key, record)
                 SELECT f.id, $7, $8 FROM f
                 ON CONFLICT (instance_id, key) DO UPDATE SET record = EXCLUDED.record"
            }
            Some(_) => {
                "INSERT INTO {s}.streams (instance_id, key, \"offset\", record)
                 SELECT f.id, $7, $9, $8 FROM f
                 ON CONFLICT (instance_id, key, \"offset\") DO UPDATE SET record = EXCLUDED.record"
            }
        };
        let statement = self.sql(&format!(
            "WITH f AS (
                 UPDATE {{s}}.instances SET recoveries = 0
                 WHERE id = $1 AND epoch = $2 AND owner = $3 RETURNING id),
             c AS (
                 INSERT INTO {{s}}.checkpoints (instance_id, key, name, ended_wait, record)
                 SELECT f.id, $4, $5, false, $6 FROM f
                 ON CONFLICT (instance_id, key) DO UPDATE SET record = EXCLUDED.record),
             p AS ({write})
             SELECT count(*) FROM f"
        ));
        let epoch = lease.epoch as i64;
        let give_up = tokio::time::Instant::now() + self.options.lease;
        let mut backoff = Duration::from_millis(20);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let written = async {
                let conn = self.conn().await.map_err(|e| (true, e))?;
                let me = self.me();
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    vec![&id, &epoch, &me, &cp.key, &cp.name, &cp.bytes, &key, &bytes];
                if let Some(offset) = &offset {
                    params.push(offset);
                }
                let row = conn
                    .query_one(&statement, &params)
                    .await
                    .map_err(|e| (retryable(&e), io("publish a value")(e)))?;
                Ok::<bool, (bool, Error)>(row.get::<_, i64>(0) == 1)
            }
            .await;
            match written {
                Ok(true) => {
                    self.announce(Notice::Published {
                        id: id.to_string(),
                        key: key.to_string(),
                    });
                    return Ok(Committed::Written);
                }
                Ok(false) => {
                    return Err(Error::Instance(InstanceError::LeaseLost {
                        instance: id.to_string(),
                        epoch: lease.epoch,
                    }));
                }
                Err((retry, e)) => {
                    let more = attempt < MIN_ATTEMPTS || tokio::time::Instant::now() < give_up;
                    if !(retry && more) {
                        return Err(e);
                    }
                    tracing::debug!(durable.error = %e, "publish retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Up to `limit` entries of stream `key` of instance `id` from offset
    /// `from` on; `NotFound` when the instance does not exist.
    pub(super) async fn stream(
        &self,
        id: &str,
        key: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventRecord)>> {
        let conn = self.conn().await?;
        let exists = conn
            .query_one_cached(
                &self.sql("SELECT EXISTS (SELECT 1 FROM {s}.instances WHERE id = $1)"),
                &[&id],
            )
            .await
            .map_err(io("read a stream"))?;
        if !exists.get::<_, bool>(0) {
            return Err(Error::Usage(UsageError::NotFound { id: id.to_string() }));
        }
        let rows = conn
            .query_cached(
                &self.sql(
                    "SELECT \"offset\", record FROM {s}.streams
                     WHERE instance_id = $1 AND key = $2 AND \"offset\" >= $3
                     ORDER BY \"offset\" LIMIT $4",
                ),
                &[
                    &id,
                    &key,
                    &i64::try_from(from).unwrap_or(i64::MAX),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(io("read a stream"))?;
        rows.iter()
            .map(|row| {
                let offset = row.get::<_, i64>(0) as u64;
                let value = decode(row.get(1), || {
                    format!("entry {offset} of stream {key:?} of instance {id:?}")
                })?;
                Ok((offset, value))
            })
            .collect()
    }

    /// The value instance `id` published under `key`; `NotFound` when the
    /// instance does not exist.
    pub(super) async fn published(&self, id: &str, key: &str) -> Result<Option<EventRecord>> {
        let conn = self.conn().await?;
        let row = conn
            .query_one_cached(
                &self.sql(
                    "SELECT EXISTS (SELECT 1 FROM {s}.instances WHERE id = $1),
                            (SELECT record FROM {s}.published WHERE instance_id = $1 AND key = $2)",
                ),
                &[&id, &key],
            )
            .await
            .map_err(io("read published state"))?;
        if !row.get::<_, bool>(0) {
            return Err(Error::Usage(UsageError::NotFound { id: id.to_string() }));
        }
        row.get::<_, Option<&[u8]>>(1)
            .map(|bytes| {
                decode(bytes, || {
                    format!("published key {key:?} of instance {id:?}")
                })
            })
            .transpose()
    }
}
