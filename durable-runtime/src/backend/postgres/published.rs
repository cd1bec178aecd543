//! Published state: a `set_event` is one fenced, idempotent statement (the
//! checkpoint and the value in one), outside the group commit; a read is a
//! plain select, from any process.

use std::time::Duration;

use crate::backend::{Committed, Lease, Notice};
use crate::error::{Error, InstanceError, Result, UsageError};
use crate::records::{CheckpointRecord, EventRecord};

use super::commit::{Cp, MIN_ATTEMPTS};
use super::group::retryable;
use super::{Inner, decode, encode, io};

impl Inner {
    /// Writes the checkpoint `record` of a `set_event` and the value of
    /// `key` for instance `id`, fenced by `lease`: one statement, so one
    /// atomic write. Its outcome is unknown only when the connection broke,
    /// and retrying is safe then: it writes the same rows under the same
    /// fence (refused with `LeaseLost` if the lease moved meanwhile; the new
    /// owner replays the checkpoint or publishes again).
    pub(super) async fn publish(
        &self,
        id: &str,
        lease: Lease,
        record: &CheckpointRecord,
        key: &str,
        value: &EventRecord,
    ) -> Result<Committed> {
        let cp = Cp::of(id, record)?;
        let bytes = encode(value, id, &format!("published key {key:?}"))?;
        let epoch = lease.epoch as i64;
        let give_up = tokio::time::Instant::now() + self.options.lease;
        let mut backoff = Duration::from_millis(20);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let written = async {
                let conn = self.conn().await.map_err(|e| (true, e))?;
                let row = conn
                    .query_one(
                        &self.sql(
                            "WITH f AS (
                                 UPDATE {s}.instances SET recoveries = 0
                                 WHERE id = $1 AND epoch = $2 AND owner = $3 RETURNING id),
                             c AS (
                                 INSERT INTO {s}.checkpoints (instance_id, key, name, ended_wait, record)
                                 SELECT f.id, $4, $5, false, $6 FROM f
                                 ON CONFLICT (instance_id, key) DO UPDATE SET record = EXCLUDED.record),
                             p AS (
                                 INSERT INTO {s}.published (instance_id, key, record)
                                 SELECT f.id, $7, $8 FROM f
                                 ON CONFLICT (instance_id, key) DO UPDATE SET record = EXCLUDED.record)
                             SELECT count(*) FROM f",
                        ),
                        &[
                            &id,
                            &epoch,
                            &self.me(),
                            &cp.key,
                            &cp.name,
                            &cp.bytes,
                            &key,
                            &bytes,
                        ],
                    )
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

    /// The value instance `id` published under `key`; `NotFound` when the
    /// instance does not exist.
    pub(super) async fn published(&self, id: &str, key: &str) -> Result<Option<EventRecord>> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
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
