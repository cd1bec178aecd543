//! Queues on PostgreSQL: an enqueued instance is a row with `queued` set
//! (no claim takes it); a dispatch locks the queue's row in `queues`
//! FOR UPDATE, so one worker at a time counts what runs (dispatched,
//! unfinished rows) and what was dispatched in the rate period, and takes
//! held rows in priority order for itself, all in one transaction.

use std::collections::HashMap;

use crate::backend::{Claim, ClaimKind, Lease, QueueStats, Queued};
use crate::error::{Error, Result, StoreError};
use crate::queue::QueueSpec;
use crate::records::{InstanceRecord, TransitionKind, TransitionRecord};

use super::Cached;
use super::status::{self, RUNNING};
use super::{Inner, decode, encode, io};

/// Candidates read per dispatch when partitions may skip some.
const SCAN: i64 = 1_000;

impl Inner {
    /// See [`Backend::enqueue_many`](crate::backend::Backend::enqueue_many).
    pub(super) async fn enqueue_many(
        &self,
        items: &[(String, InstanceRecord)],
    ) -> Result<Vec<Queued>> {
        let mut ids = Vec::with_capacity(items.len());
        let mut workflows = Vec::with_capacity(items.len());
        let mut created_at = Vec::with_capacity(items.len());
        let mut updated = Vec::with_capacity(items.len());
        let mut records = Vec::with_capacity(items.len());
        let mut queues: Vec<Option<String>> = Vec::with_capacity(items.len());
        let mut priorities = Vec::with_capacity(items.len());
        let mut partitions: Vec<Option<String>> = Vec::with_capacity(items.len());
        let mut dedups: Vec<Option<String>> = Vec::with_capacity(items.len());
        let mut not_before = Vec::with_capacity(items.len());
        for (id, record) in items {
            records.push(encode(record, id, "the instance record")?);
            ids.push(id.as_str());
            workflows.push(record.workflow.as_str());
            created_at.push(record.created_at_ms as i64);
            updated.push(status::updated_ms(record));
            let entry = record.queue_entry().map(|(e, _)| e.clone());
            queues.push(entry.as_ref().map(|e| e.queue.clone()));
            priorities.push(entry.as_ref().map_or(0, |e| e.priority));
            partitions.push(entry.as_ref().and_then(|e| e.partition.clone()));
            dedups.push(entry.as_ref().and_then(|e| e.dedup.clone()));
            not_before.push(entry.as_ref().map_or(0, |e| e.not_before_ms as i64));
        }
        let conn = self.conn().await?;
        // ON CONFLICT DO NOTHING covers both the id and a held dedup id.
        let inserted = conn
            .query_cached(
                &self.sql(&format!(
                    "INSERT INTO {{s}}.instances
                         (id, workflow, status, epoch, owner, created_at_ms, updated_ms, record,
                          finished, queue, queued, priority, queue_seq, partition_key, dedup,
                          not_before_ms)
                     SELECT t.id, t.wf, {RUNNING}, 1, NULL, t.c, t.u, t.r, false, t.q, true,
                            t.p, nextval('{{s}}.queue_seq'), t.k, t.d, t.nb
                     FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bytea[],
                                 $6::text[], $7::int4[], $8::text[], $9::text[], $10::int8[])
                          WITH ORDINALITY AS t(id, wf, c, u, r, q, p, k, d, nb, n)
                     ORDER BY t.n
                     ON CONFLICT DO NOTHING RETURNING id"
                )),
                &[
                    &ids,
                    &workflows,
                    &created_at,
                    &updated,
                    &records,
                    &queues,
                    &priorities,
                    &partitions,
                    &dedups,
                    &not_before,
                ],
            )
            .await
            .map_err(io("enqueue instances"))?;
        let new: std::collections::HashSet<String> =
            inserted.iter().map(|row| row.get::<_, String>(0)).collect();
        if !new.is_empty() {
            self.announce(crate::backend::Notice::Ready);
        }
        let mut answers = Vec::with_capacity(items.len());
        for (i, (id, _)) in items.iter().enumerate() {
            if new.contains(id) {
                answers.push(Queued::New);
                continue;
            }
            let row = conn
                .query_opt_cached(
                    &self.sql("SELECT record FROM {s}.instances WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(io("read an instance"))?;
            if let Some(row) = row {
                let bytes: &[u8] = row.get(0);
                answers.push(Queued::Exists(decode(bytes, || {
                    format!("instance {id:?}")
                })?));
                continue;
            }
            let holder = conn
                .query_opt_cached(
                    &self.sql(
                        "SELECT id FROM {s}.instances
                         WHERE queue = $1 AND dedup = $2 AND NOT finished",
                    ),
                    &[&queues[i], &dedups[i]],
                )
                .await
                .map_err(io("read a deduplication id"))?;
            match holder {
                Some(row) => answers.push(Queued::Duplicate(row.get(0))),
                None => {
                    return Err(Error::Store(StoreError::io_message(
                        "enqueue instances",
                        format!("instance {id:?} was neither written nor found; enqueue it again"),
                    )));
                }
            }
        }
        Ok(answers)
    }

    /// See [`Backend::dispatch`](crate::backend::Backend::dispatch).
    pub(super) async fn dispatch(
        &self,
        spec: &QueueSpec,
        runnable: &[(&'static str, u32)],
        room: usize,
    ) -> Result<Vec<Claim>> {
        let mut workflows: Vec<&str> = runnable.iter().map(|(name, _)| *name).collect();
        workflows.dedup();
        if room == 0 || workflows.is_empty() || self.stopped() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let me = self.me();
        let name = spec.name.as_str();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(io("begin a dispatch"))?;
        tx.batch_execute(&self.tx_settings())
            .await
            .map_err(io("begin a dispatch"))?;
        let rate = spec.rate_ms();
        let as_int = |v: Option<u32>| v.map(|n| n.min(i32::MAX as u32) as i32);
        tx.execute_cached(
            &self.sql(
                "INSERT INTO {s}.queues
                     (name, concurrency, partition_concurrency, per_worker, rate_n, rate_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE
                 SET concurrency = $2, partition_concurrency = $3, per_worker = $4,
                     rate_n = $5, rate_ms = $6
                 WHERE ({s}.queues.concurrency, {s}.queues.partition_concurrency,
                        {s}.queues.per_worker, {s}.queues.rate_n, {s}.queues.rate_ms)
                       IS DISTINCT FROM ($2, $3, $4, $5, $6)",
            ),
            &[
                &name,
                &as_int(spec.concurrency),
                &as_int(spec.partition_concurrency),
                &as_int(spec.per_worker),
                &as_int(rate.map(|(n, _)| n)),
                &rate.map(|(_, ms)| ms as i64),
            ],
        )
        .await
        .map_err(io("declare a queue"))?;
        tx.query_one_cached(
            &self.sql("SELECT name FROM {s}.queues WHERE name = $1 FOR UPDATE"),
            &[&name],
        )
        .await
        .map_err(io("lock a queue"))?;
        let mut room = room;
        let mut per_partition: HashMap<Option<String>, i64> = HashMap::new();
        if spec.concurrency.is_some() || spec.partition_concurrency.is_some() {
            let rows = tx
                .query_cached(
                    &self.sql(
                        "SELECT partition_key, count(*) FROM {s}.instances
                         WHERE queue = $1 AND NOT queued AND NOT finished
                         GROUP BY partition_key",
                    ),
                    &[&name],
                )
                .await
                .map_err(io("count a queue's running instances"))?;
            let mut total = 0i64;
            for row in rows {
                let n: i64 = row.get(1);
                total += n;
                per_partition.insert(row.get(0), n);
            }
            if let Some(limit) = spec.concurrency {
                room = room.min((i64::from(limit) - total).max(0) as usize);
            }
        }
        if let Some((n, period)) = spec.rate_ms() {
            let row = tx
                .query_one_cached(
                    &self.sql(
                        "SELECT count(*) FROM {s}.instances
                         WHERE queue = $1 AND dispatched_ms > $2",
                    ),
                    &[&name, &(now.saturating_sub(period) as i64)],
                )
                .await
                .map_err(io("count a queue's dispatches"))?;
            let recent: i64 = row.get(0);
            room = room.min((i64::from(n) - recent).max(0) as usize);
        }
        if room == 0 {
            tx.commit().await.map_err(io("end a dispatch"))?;
            return Ok(Vec::new());
        }
        let scan = if spec.partition_concurrency.is_some() {
            SCAN
        } else {
            room.min(SCAN as usize) as i64
        };
        let rows = tx
            .query_cached(
                &self.sql(
                    "SELECT id, partition_key, record, recoveries FROM {s}.instances
                     WHERE queue = $1 AND queued AND NOT finished AND not_before_ms <= $2
                       AND workflow = ANY($4) AND NOT paused
                     ORDER BY priority, queue_seq LIMIT $3",
                ),
                &[&name, &(now as i64), &scan, &workflows],
            )
            .await
            .map_err(io("read a queue"))?;
        let mut claims = Vec::new();
        for row in rows {
            if claims.len() >= room {
                break;
            }
            let id: String = row.get(0);
            let partition: Option<String> = row.get(1);
            if let Some(limit) = spec.partition_concurrency {
                let count = per_partition.entry(partition).or_default();
                if *count >= i64::from(limit) {
                    continue;
                }
                *count += 1;
            }
            let mut record: InstanceRecord = decode(row.get(2), || format!("instance {id:?}"))?;
            let recoveries: i32 = row.get(3);
            record.transitions.push(TransitionRecord {
                at_ms: now,
                kind: TransitionKind::Dispatched,
            });
            let bytes = encode(&record, &id, "the instance record")?;
            let updated = tx
                .query_one_cached(
                    &self.sql(
                        "UPDATE {s}.instances
                         SET queued = false, dispatched_ms = $2, owner = $3, epoch = epoch + 1,
                             record = $4, updated_ms = $5, updated_at = now()
                         WHERE id = $1 RETURNING epoch",
                    ),
                    &[
                        &id,
                        &(now as i64),
                        &me,
                        &bytes,
                        &status::updated_ms(&record),
                    ],
                )
                .await
                .map_err(io("dispatch an instance"))?;
            let epoch: i64 = updated.get(0);
            claims.push(Claim {
                id,
                lease: Lease {
                    epoch: epoch as u64,
                    owner: me,
                },
                record,
                recoveries: recoveries.max(0) as u32,
                kind: ClaimKind::Wake,
            });
        }
        tx.commit().await.map_err(io("commit a dispatch"))?;
        Ok(claims)
    }

    /// See [`Backend::queue_stats`](crate::backend::Backend::queue_stats).
    pub(super) async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let conn = self.conn().await?;
        let rows = conn
            .query_cached(
                &self.sql(
                    "WITH c AS (
                         SELECT queue, count(*) FILTER (WHERE queued) AS pending,
                                count(*) FILTER (WHERE NOT queued) AS running
                         FROM {s}.instances WHERE queue IS NOT NULL AND NOT finished
                         GROUP BY queue)
                     SELECT coalesce(q.name, c.queue), coalesce(c.pending, 0),
                            coalesce(c.running, 0), q.name IS NOT NULL, q.concurrency,
                            q.partition_concurrency, q.per_worker, q.rate_n, q.rate_ms
                     FROM {s}.queues q FULL JOIN c ON c.queue = q.name
                     ORDER BY 1",
                ),
                &[],
            )
            .await
            .map_err(io("count the queues"))?;
        let limit = |v: Option<i32>| v.map(|n| n.max(0) as u32);
        Ok(rows
            .iter()
            .map(|row| {
                let name: String = row.get(0);
                let pending: i64 = row.get(1);
                let running: i64 = row.get(2);
                let stored: bool = row.get(3);
                let limits = stored.then(|| {
                    let mut q = QueueSpec::new(name.clone());
                    q.concurrency = limit(row.get(4));
                    q.partition_concurrency = limit(row.get(5));
                    q.per_worker = limit(row.get(6));
                    let rate_n: Option<i32> = row.get(7);
                    let rate_ms: Option<i64> = row.get(8);
                    if let (Some(n), Some(ms)) = (rate_n, rate_ms) {
                        q.rate = Some((
                            n.max(0) as u32,
                            std::time::Duration::from_millis(ms.max(0) as u64),
                        ));
                    }
                    q
                });
                QueueStats {
                    name,
                    limits,
                    pending: pending.max(0) as u64,
                    running: running.max(0) as u64,
                }
            })
            .collect())
    }
}
