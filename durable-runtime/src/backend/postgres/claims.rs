//! Ownership: create-if-absent, claims (`FOR UPDATE SKIP LOCKED`, moving
//! the epoch), release, and the local hint of the next timer this process
//! parked.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Row;

use crate::backend::{Claim, ClaimKind, Created, Lease, Notice, Round};
use crate::error::Result;
use crate::records::InstanceRecord;

use super::Cached;
use super::status::{self, BLOCKED, INCOMPATIBLE, NEEDS_ATTENTION, READY, RUNNING};
use super::{Inner, decode, encode, io};

/// The timers this process parked, earliest first (a hint: another worker
/// may have claimed them since).
#[derive(Debug, Default)]
pub(super) struct Timers {
    by_time: BTreeSet<(u64, String)>,
    by_id: HashMap<String, u64>,
}

impl Timers {
    pub(super) fn insert(&mut self, id: &str, at: u64) {
        self.remove(id);
        self.by_time.insert((at, id.to_string()));
        self.by_id.insert(id.to_string(), at);
    }

    pub(super) fn remove(&mut self, id: &str) {
        if let Some(at) = self.by_id.remove(id) {
            self.by_time.remove(&(at, id.to_string()));
        }
    }

    /// Forgets the timers due at `now`: a claim is about to look for them.
    fn take_due(&mut self, now: u64) {
        while let Some((at, id)) = self.by_time.first().cloned() {
            if at > now {
                break;
            }
            self.by_time.pop_first();
            self.by_id.remove(&id);
        }
    }
}

/// Records how late a claimed timer (sleeping or waiting with a deadline)
/// was claimed; the row's sixth column is its due time before the claim.
fn claim_lag(row: &Row, now: u64) {
    let before: i16 = row.get(4);
    if let (status::SLEEPING | status::WAITING, Ok(Some(at))) =
        (before, row.try_get::<_, Option<i64>>(5))
    {
        crate::metrics::claim_lag_ms(now.saturating_sub(at.max(0) as u64));
    }
}

/// The columns a claim returns: id, epoch, record, recoveries, the status
/// before the claim.
const CLAIMED: &str = "i.id, i.epoch, i.record, i.recoveries, c.status";

/// The statement of a claim round ([`Inner::claim_due`]): locks up to `$3`
/// unowned instances of the workflows `$1` that can run now (new or woken,
/// parked with a timer due at `$2`, or blocked by a worker that is gone),
/// skipping those locked by another round and the ids `$5`, and makes
/// worker `$4` their owner under a new epoch. Returns [`CLAIMED`], the due
/// time before the claim, and whether no checkpoint is stored. Every arm
/// of its condition is served by a partial index, so its plan needs no
/// table scan.
pub(super) fn claim_due_sql() -> String {
    format!(
        "WITH c AS (
             SELECT id, status, wake_at_ms FROM {{s}}.instances
             WHERE workflow = ANY($1) AND owner IS NULL AND NOT paused AND NOT queued
               AND id <> ALL($5)
               AND (status IN ({RUNNING}, {READY})
                    OR (status IN ({}, {}) AND wake_at_ms <= $2)
                    OR (status = {BLOCKED} AND NOT EXISTS (
                          SELECT 1 FROM {{s}}.workers w
                          WHERE w.id = blocked_by AND w.state = 0)))
             LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE {{s}}.instances i
         SET owner = $4, epoch = i.epoch + 1, updated_at = now(),
             status = CASE WHEN i.status = {BLOCKED} THEN i.status ELSE {RUNNING} END,
             park = NULL, wake_at_ms = NULL
         FROM c WHERE i.id = c.id
         RETURNING {CLAIMED}, c.wake_at_ms,
             NOT EXISTS (SELECT 1 FROM {{s}}.checkpoints k WHERE k.instance_id = i.id)",
        status::SLEEPING,
        status::WAITING
    )
}

impl Inner {
    /// Inserts instance `id`, owned by worker `me`, unless it exists:
    /// its epoch if it is new.
    pub(super) async fn insert_instance<C: deadpool_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        id: &str,
        record: &InstanceRecord,
        me: i64,
    ) -> Result<Option<i64>> {
        let bytes = encode(record, id, "the instance record")?;
        let inserted = client
            .query_opt_cached(
                &self.sql(
                    "INSERT INTO {s}.instances
                         (id, workflow, status, epoch, owner, created_at_ms, updated_ms, record,
                          finished)
                     VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8)
                     ON CONFLICT (id) DO NOTHING RETURNING epoch",
                ),
                &[
                    &id,
                    &record.workflow,
                    &status::of_state(&record.state),
                    &me,
                    &(record.created_at_ms as i64),
                    &status::updated_ms(record),
                    &bytes,
                    &status::finished(&record.state),
                ],
            )
            .await
            .map_err(io("create an instance"))?;
        Ok(inserted.map(|row| row.get(0)))
    }

    /// [`create`](Self::create) of every instance of `items`: one
    /// statement inserts the new ones (one transaction, one commit), a
    /// second reads the ones that existed.
    pub(super) async fn create_many(
        &self,
        items: &[(String, InstanceRecord)],
    ) -> Result<Vec<Created>> {
        self.insert_many(items, true).await
    }

    /// [`create_many`](Self::create_many), owned by this worker when
    /// `owned`, else by nobody ([`Created::Unclaimed`]).
    pub(super) async fn insert_many(
        &self,
        items: &[(String, InstanceRecord)],
        owned: bool,
    ) -> Result<Vec<Created>> {
        let mut ids = Vec::with_capacity(items.len());
        let mut workflows = Vec::with_capacity(items.len());
        let mut statuses = Vec::with_capacity(items.len());
        let mut created_at = Vec::with_capacity(items.len());
        let mut updated = Vec::with_capacity(items.len());
        let mut records = Vec::with_capacity(items.len());
        let mut finished = Vec::with_capacity(items.len());
        for (id, record) in items {
            records.push(encode(record, id, "the instance record")?);
            ids.push(id.as_str());
            workflows.push(record.workflow.as_str());
            // Left for the workers: claimed as ready to run (a wake-up),
            // not as an instance to recover.
            statuses.push(match status::of_state(&record.state) {
                status::RUNNING if !owned => status::READY,
                code => code,
            });
            created_at.push(record.created_at_ms as i64);
            updated.push(status::updated_ms(record));
            finished.push(status::finished(&record.state));
        }
        let conn = self.conn().await?;
        let me = self.me();
        let owner = owned.then_some(me);
        let inserted = conn
            .query_cached(
                &self.sql(
                    "INSERT INTO {s}.instances
                         (id, workflow, status, epoch, owner, created_at_ms, updated_ms, record,
                          finished)
                     SELECT t.id, t.wf, t.st, 1, $4, t.c, t.u, t.r, t.f
                     FROM unnest($1::text[], $2::text[], $3::int2[], $5::int8[], $6::int8[],
                                 $7::bytea[], $8::bool[]) AS t(id, wf, st, c, u, r, f)
                     ON CONFLICT (id) DO NOTHING RETURNING id, epoch",
                ),
                &[
                    &ids,
                    &workflows,
                    &statuses,
                    &owner,
                    &created_at,
                    &updated,
                    &records,
                    &finished,
                ],
            )
            .await
            .map_err(io("create instances"))?;
        let new: HashMap<String, i64> = inserted
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
            .collect();
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !new.contains_key(*id))
            .collect();
        let mut existing: HashMap<String, InstanceRecord> = HashMap::new();
        if !missing.is_empty() {
            let rows = conn
                .query_cached(
                    &self.sql("SELECT id, record FROM {s}.instances WHERE id = ANY($1)"),
                    &[&missing],
                )
                .await
                .map_err(io("read instances"))?;
            for row in rows {
                let id: String = row.get(0);
                let bytes: &[u8] = row.get(1);
                let record = decode(bytes, || format!("instance {id:?}"))?;
                existing.insert(id, record);
            }
        }
        ids.iter()
            .map(|id| match new.get(*id) {
                Some(epoch) if owned => Ok(Created::New(Lease {
                    epoch: *epoch as u64,
                    owner: me,
                })),
                Some(_) => Ok(Created::Unclaimed),
                None => existing.remove(*id).map(Created::Exists).ok_or_else(|| {
                    // Purged between the insert and the read.
                    crate::error::Error::Store(crate::error::StoreError::io_message(
                        "create instances",
                        format!("instance {id:?} vanished while it was being created"),
                    ))
                }),
            })
            .collect()
    }

    pub(super) async fn claim(&self, id: &str) -> Result<Option<Claim>> {
        let conn = self.conn().await?;
        let me = self.me();
        let row = conn
            .query_opt_cached(
                &self.sql(&format!(
                    "WITH c AS (
                         SELECT id, status FROM {{s}}.instances
                         WHERE id = $1 AND owner IS NULL AND NOT paused AND NOT queued
                           AND status IN ({RUNNING}, {READY},
                               {BLOCKED}, {NEEDS_ATTENTION}, {INCOMPATIBLE})
                         FOR UPDATE)
                     UPDATE {{s}}.instances i
                     SET owner = $2, epoch = i.epoch + 1, updated_at = now(),
                         status = CASE WHEN i.status = {READY} THEN {RUNNING} ELSE i.status END
                     FROM c WHERE i.id = c.id
                     RETURNING {CLAIMED}"
                )),
                &[&id, &me],
            )
            .await
            .map_err(io("claim an instance"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        self.timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match self.claimed(&row, me) {
            Ok(claim) => Ok(Some(claim)),
            Err(e) => {
                let epoch: i64 = row.get(1);
                let _ = self
                    .release(
                        id,
                        Lease {
                            epoch: epoch as u64,
                            owner: me,
                        },
                    )
                    .await;
                Err(e)
            }
        }
    }

    pub(super) async fn claim_due(
        &self,
        runnable: &[(&'static str, u32)],
        limit: usize,
    ) -> Result<Round> {
        let mut round = Round::default();
        let mut workflows: Vec<&str> = runnable.iter().map(|(name, _)| *name).collect();
        workflows.dedup();
        if workflows.is_empty() || limit == 0 || self.stopped() {
            return Ok(round);
        }
        let now = self.clock.now_ms();
        self.timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_due(now);
        let unreadable = self
            .unreadable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let conn = self.conn().await?;
        let me = self.me();
        let claim = conn
            .prepare_cached(&self.sql(&claim_due_sql()))
            .await
            .map_err(io("claim runnable instances"))?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&workflows, &(now as i64), &limit, &me, &unreadable];
        // One round trip, BEGIN and COMMIT pipelined around the claim (a
        // failed claim aborts the transaction, and COMMIT then rolls back).
        // Planned once per connection and kept, as the group commit's
        // statements: a plan at each run cost about a millisecond of the
        // server's time (the partial indexes' predicates are proved against
        // each arm of the condition), more than running it.
        let begin = format!("BEGIN; {}", self.group_tx_settings());
        let (begun, rows, committed) = tokio::join!(
            conn.batch_execute(&begin),
            conn.query(&claim, &params),
            conn.batch_execute("COMMIT"),
        );
        let rows = begun
            .and(rows)
            .and_then(|rows| committed.map(|()| rows))
            .map_err(io("claim runnable instances"))?;
        for row in rows {
            claim_lag(&row, now);
            let claimed = self.claimed(&row, me).map(|mut claim| {
                // Woken with nothing stored: no checkpoint to read.
                if claim.kind == ClaimKind::Wake && row.get::<_, bool>(6) {
                    claim.kind = ClaimKind::Unstarted;
                }
                claim
            });
            match claimed {
                Ok(claim)
                    if runnable.iter().any(|(name, version)| {
                        *name == claim.record.workflow && *version == claim.record.version
                    }) =>
                {
                    round.claims.push(claim)
                }
                Ok(claim) => {
                    // A version this process does not run: left to one that does.
                    self.unreadable
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(claim.id.clone());
                    let _ = self.release(&claim.id, claim.lease).await;
                    round.passed_over.push((claim.id, Ok(claim.record)));
                }
                Err(e) => {
                    // Left to a worker that reads it (a newer build).
                    let id: String = row.get(0);
                    let epoch: i64 = row.get(1);
                    tracing::error!(durable.instance_id = %id, durable.error = %e, "claimed an instance whose record this build cannot read; released it");
                    self.unreadable
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(id.clone());
                    let lease = Lease {
                        epoch: epoch as u64,
                        owner: me,
                    };
                    let _ = self.release(&id, lease).await;
                }
            }
        }
        Ok(round)
    }

    /// The unfinished instances this worker owns, with their leases (an
    /// unnamed statement, planned with this worker's id: a sweep every few
    /// seconds, through the index of owned instances).
    pub(super) async fn owned(&self) -> Result<Vec<(String, Lease)>> {
        let conn = self.conn().await?;
        let me = self.me();
        let rows = conn
            .query(
                &self.sql("SELECT id, epoch FROM {s}.instances WHERE owner = $1 AND NOT finished"),
                &[&me],
            )
            .await
            .map_err(io("list the instances this worker owns"))?;
        Ok(rows
            .iter()
            .map(|row| {
                let epoch: i64 = row.get(1);
                (
                    row.get(0),
                    Lease {
                        epoch: epoch as u64,
                        owner: me,
                    },
                )
            })
            .collect())
    }

    /// The ids of every unfinished instance.
    pub(super) async fn unfinished(&self) -> Result<Vec<String>> {
        let conn = self.conn().await?;
        let rows = conn
            .query_cached(
                &self.sql(&format!(
                    "SELECT id FROM {{s}}.instances WHERE status < {} ORDER BY id",
                    status::COMPLETED
                )),
                &[],
            )
            .await
            .map_err(io("list unfinished instances"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn claimed(&self, row: &Row, me: i64) -> Result<Claim> {
        let id: String = row.get(0);
        let epoch: i64 = row.get(1);
        let bytes: &[u8] = row.get(2);
        let recoveries: i32 = row.get(3);
        let before: i16 = row.get(4);
        let record = decode(bytes, || format!("instance {id:?}"))?;
        let kind = if (READY..=status::WAITING).contains(&before) {
            ClaimKind::Wake
        } else {
            ClaimKind::Recover
        };
        Ok(Claim {
            id,
            lease: Lease {
                epoch: epoch as u64,
                owner: me,
            },
            record,
            recoveries: recoveries.max(0) as u32,
            kind,
        })
    }

    pub(super) async fn release(&self, id: &str, lease: Lease) -> Result<()> {
        let conn = self.conn().await?;
        let released = conn
            .execute_cached(
                &self.sql(
                    "UPDATE {s}.instances SET owner = NULL, updated_at = now()
                     WHERE id = $1 AND epoch = $2 AND owner = $3",
                ),
                &[&id, &(lease.epoch as i64), &self.me()],
            )
            .await
            .map_err(io("release an instance"))?;
        if released > 0 {
            self.hints.send(Notice::Ready);
        }
        Ok(())
    }

    pub(super) fn next_due(&self) -> Option<u64> {
        self.timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_time
            .first()
            .map(|(at, _)| *at)
    }
}
