//! Inside a group's transaction: lock the rows of its instances in id
//! order and read their epoch and owner, decide each write in turn (a
//! refused fence fails only its own write), look up the events that parks
//! and timeouts depend on, then upsert the checkpoints and update the rows
//! with array-bound statements, pipelined with the COMMIT. Two round
//! trips: the writes wait for the locks' answer, which decides them.

use std::collections::{HashMap, HashSet};

use crate::backend::{Committed, Notice};
use crate::error::{Error, InstanceError, Result};
use crate::records::InstanceRecord;

use super::commit::{Body, Cp, Job, Prepared};
use super::{Inner, decode, encode, status};

/// Locks the rows of a group's instances (`$1`, sorted) and reads their
/// epoch, owner and count of resumes, and the stored record of those in
/// `$2` (whose record write appends a transition).
pub(super) const FENCE: &str = "SELECT id, epoch, owner, recoveries,
        CASE WHEN id = ANY($2) THEN record END
 FROM {s}.instances WHERE id = ANY($1)
 ORDER BY id FOR UPDATE";

/// Which of the events (instance, name, number) that parks and timeouts
/// wait for are stored.
pub(super) const AWAITED_EVENTS: &str = "SELECT e.instance_id, e.name, e.seq FROM {s}.events e
 JOIN unnest($1::text[], $2::text[], $3::int4[]) AS w(id, name, seq)
   ON e.instance_id = w.id AND e.name = w.name AND e.seq = w.seq";

/// Writes a group's checkpoints, one row per key.
pub(super) const UPSERT_CHECKPOINTS: &str =
    "INSERT INTO {s}.checkpoints (instance_id, key, name, ended_wait, record)
 SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bool[], $5::bytea[])
 ON CONFLICT (instance_id, key) DO UPDATE
   SET record = EXCLUDED.record, ended_wait = EXCLUDED.ended_wait";

/// Applies a group's changes to its instance rows, one per row.
pub(super) const UPDATE_ROWS: &str = "UPDATE {s}.instances i SET
         record = COALESCE(u.record, i.record),
         status = COALESCE(u.status, i.status),
         owner = CASE WHEN u.release THEN NULL ELSE i.owner END,
         blocked_by = CASE WHEN u.blocked THEN $12 ELSE i.blocked_by END,
         recoveries = COALESCE(u.recoveries, i.recoveries),
         park = CASE u.park_op WHEN 1 THEN u.park WHEN 2 THEN NULL ELSE i.park END,
         wake_at_ms = CASE u.park_op WHEN 1 THEN u.wake_at WHEN 2 THEN NULL
                      ELSE i.wake_at_ms END,
         finished = i.finished OR u.finished,
         updated_ms = COALESCE(u.updated_ms, i.updated_ms),
         updated_at = now()
     FROM unnest($1::text[], $2::bytea[], $3::int2[], $4::bool[], $5::bool[],
                 $6::int4[], $7::int2[], $8::bytea[], $9::int8[], $10::bool[],
                 $11::int8[])
          AS u(id, record, status, release, blocked, recoveries, park_op, park,
               wake_at, finished, updated_ms)
     WHERE i.id = u.id";

/// The change a group makes to one instance row.
#[derive(Default)]
struct Change {
    record: Option<Vec<u8>>,
    status: Option<i16>,
    release: bool,
    blocked: bool,
    recoveries: Option<i32>,
    /// 0 keep, 1 set, 2 clear.
    park_op: i16,
    park: Option<Vec<u8>>,
    wake_at: Option<i64>,
    finished: bool,
    updated_ms: Option<i64>,
}

pub(super) type Decided = (
    Vec<Result<Committed>>,
    Vec<Notice>,
    Vec<(String, Option<u64>)>,
);

/// How COMMIT answered.
pub(super) type CommitAnswer = std::result::Result<(), tokio_postgres::Error>;

/// Inside the transaction: locks, decides and writes (and commits, when
/// `commit`: pipelined behind the writes); returns each write's outcome,
/// the hints to send and the timers parked or unparked here, and how
/// COMMIT answered if it was sent.
pub(super) async fn decide_and_write(
    inner: &Inner,
    conn: &deadpool_postgres::ClientWrapper,
    jobs: &[Job],
    me: i64,
    txid: &mut Option<i64>,
    commit: bool,
) -> std::result::Result<(Decided, Option<CommitAnswer>), tokio_postgres::Error> {
    let mut ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    // The stored records of the instances a record write appends a
    // transition to (an operator may have recorded some since the claim).
    let appending: Vec<&str> = jobs
        .iter()
        .filter(|j| {
            matches!(
                j.write,
                Prepared::Record {
                    body: Body::Appending(..),
                    ..
                }
            )
        })
        .map(|j| j.id.as_str())
        .collect();
    let fence = conn.prepare_cached(&inner.sql(FENCE)).await?;
    let current = conn.prepare_cached("SELECT txid_current()").await?;
    // One round trip: the three go out pipelined, in this order.
    let fence_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&ids, &appending];
    let begin = format!("BEGIN; {}", inner.group_tx_settings());
    let (begun, id, rows) = tokio::join!(
        conn.batch_execute(&begin),
        conn.query_one(&current, &[]),
        conn.query(&fence, &fence_params),
    );
    begun?;
    *txid = Some(id?.get(0));
    let rows = rows?;
    // As this group leaves them (a later write of the group reads what an
    // earlier one wrote).
    let mut records: HashMap<String, Vec<u8>> = HashMap::new();
    for row in &rows {
        if let Some(bytes) = row.get::<_, Option<Vec<u8>>>(4) {
            records.insert(row.get(0), bytes);
        }
    }
    // Each locked row's epoch and owner, and its count of resumes without
    // progress as this group leaves it (a checkpoint rewrites the row only
    // to set that back to 0).
    let mut held: HashMap<String, (i64, Option<i64>, i32)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let fenced = |held: &HashMap<String, (i64, Option<i64>, i32)>, job: &Job| {
        held.get(&job.id)
            .is_some_and(|(epoch, owner, _)| *epoch == job.epoch && *owner == Some(me))
    };
    // The events that parks and timeouts of held instances depend on.
    let mut wanted: (Vec<&str>, Vec<&str>, Vec<i32>) = Default::default();
    for job in jobs.iter().filter(|j| fenced(&held, j)) {
        match &job.write {
            Prepared::Park { awaited, .. } => {
                for (name, seq) in awaited {
                    wanted.0.push(&job.id);
                    wanted.1.push(name);
                    wanted.2.push(*seq);
                }
            }
            Prepared::TimeOut(cp) => {
                if let Some(seq) = timeout_seq(&cp.key, &job.id, &cp.name) {
                    wanted.0.push(&job.id);
                    wanted.1.push(&cp.name);
                    wanted.2.push(seq);
                }
            }
            _ => {}
        }
    }
    let stored: HashSet<(String, String, i32)> = if wanted.0.is_empty() {
        HashSet::new()
    } else {
        conn.query(
            &conn.prepare_cached(&inner.sql(AWAITED_EVENTS)).await?,
            &[&wanted.0, &wanted.1, &wanted.2],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let has_event =
        |id: &str, name: &str, seq: i32| stored.contains(&(id.to_string(), name.to_string(), seq));

    let mut results = Vec::with_capacity(jobs.len());
    let mut checkpoints: Vec<(&str, Cp)> = Vec::new();
    let mut changes: HashMap<&str, Change> = HashMap::new();
    let mut notices = Vec::new();
    let mut parked = Vec::new();
    for job in jobs {
        if !fenced(&held, job) {
            results.push(Err(Error::Instance(InstanceError::LeaseLost {
                instance: job.id.clone(),
                epoch: job.epoch as u64,
            })));
            continue;
        }
        let id = job.id.as_str();
        let result = match &job.write {
            Prepared::Checkpoint(cp, progress) => {
                checkpoints.push((id, cp.clone()));
                if *progress
                    && let Some((_, _, n)) = held.get_mut(id)
                    && std::mem::take(n) != 0
                {
                    changes.entry(id).or_default().recoveries = Some(0);
                }
                Committed::Written
            }
            Prepared::TimeOut(cp) => {
                let seq = timeout_seq(&cp.key, id, &cp.name);
                if seq.is_some_and(|seq| has_event(id, &cp.name, seq)) {
                    Committed::EventFirst
                } else {
                    checkpoints.push((id, cp.clone()));
                    Committed::Written
                }
            }
            Prepared::Park {
                bytes,
                status,
                wake_at,
                awaited,
            } => {
                if awaited.iter().any(|(name, seq)| has_event(id, name, *seq)) {
                    Committed::EventFirst
                } else {
                    let change = changes.entry(id).or_default();
                    change.status = Some(*status);
                    change.park_op = 1;
                    change.park = Some(bytes.clone());
                    change.wake_at = wake_at.map(|w| w as i64);
                    change.release = true;
                    parked.push((job.id.clone(), *wake_at));
                    held.remove(id);
                    Committed::Written
                }
            }
            Prepared::Record {
                body,
                status,
                active,
                blocked,
                updated_ms,
            } => {
                let bytes = match body {
                    Body::Encoded(bytes) => bytes.clone(),
                    Body::Appending(record, transition) => {
                        let mut record = (**record).clone();
                        let stored = records.get(id).and_then(|bytes| {
                            decode::<InstanceRecord>(bytes, String::new)
                                .ok()
                                .map(|r| r.transitions)
                        });
                        record.restate(stored, transition.clone());
                        match encode(&record, id, "the instance record") {
                            Ok(bytes) => bytes,
                            Err(e) => {
                                results.push(Err(e));
                                continue;
                            }
                        }
                    }
                };
                if let Some(stored) = records.get_mut(id) {
                    stored.clone_from(&bytes);
                }
                let change = changes.entry(id).or_default();
                change.record = Some(bytes);
                change.status = Some(*status);
                change.updated_ms = Some(*updated_ms);
                change.blocked = *blocked;
                match active {
                    Some(n) => {
                        let n = (*n).min(i32::MAX as u32) as i32;
                        change.recoveries = Some(n);
                        if let Some((_, _, stored)) = held.get_mut(id) {
                            *stored = n;
                        }
                    }
                    None => {
                        change.finished = true;
                        change.park_op = 2;
                        change.park = None;
                        change.wake_at = None;
                    }
                }
                if *status != status::RUNNING {
                    change.release = true;
                    held.remove(id);
                    notices.push(Notice::Ended { id: job.id.clone() });
                }
                Committed::Written
            }
        };
        results.push(Ok(result));
    }

    let mut writes: Vec<(tokio_postgres::Statement, Params)> = Vec::new();
    if !checkpoints.is_empty() {
        // One row per key: the last write of a key wins.
        let mut seen = HashSet::new();
        let mut cps: Vec<&(&str, Cp)> = checkpoints
            .iter()
            .rev()
            .filter(|(id, cp)| seen.insert((*id, cp.key.as_slice())))
            .collect();
        cps.sort_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
        let insert = conn.prepare_cached(&inner.sql(UPSERT_CHECKPOINTS)).await?;
        let params: Params = vec![
            Box::new(cps.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>()),
            Box::new(cps.iter().map(|(_, cp)| cp.key.clone()).collect::<Vec<_>>()),
            Box::new(
                cps.iter()
                    .map(|(_, cp)| cp.name.clone())
                    .collect::<Vec<_>>(),
            ),
            Box::new(cps.iter().map(|(_, cp)| cp.ended_wait).collect::<Vec<_>>()),
            Box::new(
                cps.iter()
                    .map(|(_, cp)| cp.bytes.clone())
                    .collect::<Vec<_>>(),
            ),
        ];
        writes.push((insert, params));
    }
    if !changes.is_empty() {
        let mut rows: Vec<(&str, Change)> = changes.into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let update = conn.prepare_cached(&inner.sql(UPDATE_ROWS)).await?;
        let params: Params = vec![
            Box::new(
                rows.iter()
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<_>>(),
            ),
            Box::new(
                rows.iter_mut()
                    .map(|(_, c)| c.record.take())
                    .collect::<Vec<_>>(),
            ),
            Box::new(rows.iter().map(|(_, c)| c.status).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.release).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.blocked).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.recoveries).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.park_op).collect::<Vec<_>>()),
            Box::new(
                rows.iter_mut()
                    .map(|(_, c)| c.park.take())
                    .collect::<Vec<_>>(),
            ),
            Box::new(rows.iter().map(|(_, c)| c.wake_at).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.finished).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|(_, c)| c.updated_ms).collect::<Vec<_>>()),
            Box::new(me),
        ];
        writes.push((update, params));
    }
    // Pipelined, with COMMIT right behind them when asked (one round
    // trip). A write that failed aborted the transaction: COMMIT then
    // rolls it back, and the write's error is the answer.
    let (answers, committed) = tokio::join!(pipelined(conn, &writes), async {
        match commit {
            true => Some(conn.batch_execute("COMMIT").await),
            false => None,
        }
    });
    for answer in answers {
        match answer {
            Ok(_) => {}
            // The connection broke with COMMIT sent: whether it took is
            // for COMMIT's own answer (then `txid_status`) to say.
            Err(e) if committed.is_some() && e.as_db_error().is_none() => {
                let committed = match committed {
                    Some(Ok(())) => Some(Err(e)),
                    other => other,
                };
                return Ok(((results, notices, parked), committed));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(((results, notices, parked), committed))
}

/// Owned statement parameters.
type Params = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

/// Runs `writes` on `conn` pipelined (sent together, answered in order).
async fn pipelined(
    conn: &tokio_postgres::Client,
    writes: &[(tokio_postgres::Statement, Params)],
) -> Vec<std::result::Result<u64, tokio_postgres::Error>> {
    let params: Vec<Vec<&(dyn tokio_postgres::types::ToSql + Sync)>> = writes
        .iter()
        .map(|(_, p)| p.iter().map(|b| &**b as _).collect())
        .collect();
    match writes {
        [] => Vec::new(),
        [(a, _)] => vec![conn.execute(a, &params[0]).await],
        [(a, _), (b, _), ..] => {
            let (x, y) = tokio::join!(conn.execute(a, &params[0]), conn.execute(b, &params[1]));
            vec![x, y]
        }
    }
}

/// The event number a timeout's checkpoint stands for: its occurrence
/// (the last four bytes of an occurrence key).
fn timeout_seq(key: &[u8], id: &str, name: &str) -> Option<i32> {
    let prefix = crate::records::name_prefix(id, name);
    let rest = key.strip_prefix(prefix.as_slice())?;
    let n: [u8; 4] = rest.try_into().ok()?;
    Some(u32::from_be_bytes(n) as i32)
}
