//! One attempt after another at writing a group: retried when its
//! transaction surely did not commit (a serialization failure, a deadlock,
//! a connection that broke before COMMIT, a server restarting), resolved
//! with `txid_status` when the answer to COMMIT was lost, answered with a
//! store error otherwise. Retries go on for up to one lease (a database
//! that restarts within it costs a wait, not a re-run of the step bodies
//! whose checkpoints are in the group; past it the leases are gone
//! anyway). A lone checkpoint is one fenced, idempotent statement.

use std::time::Duration;

use crate::backend::{Committed, Notice};
use crate::error::{Error, InstanceError, Result, StoreError};

#[cfg(test)]
use super::commit::Fault;
use super::commit::{Cp, Job, MIN_ATTEMPTS, Prepared};

/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
use super::{Inner, io};

/// How one attempt at a group ended.
pub(super) enum Attempt {
    Done(
        Vec<Result<Committed>>,
        Vec<Notice>,
        Vec<(String, Option<u64>)>,
    ),
    /// Surely not committed; worth another try.
    Retry(Error),
    /// Not committed, or unknown: answer with this error.
    Fail(Error),
}

pub(super) async fn write_group(inner: &Inner, jobs: &[Job]) -> Vec<Result<Committed>> {
    let mut backoff = Duration::from_millis(20);
    let mut last = None;
    let give_up = tokio::time::Instant::now() + inner.options.lease;
    let timer = crate::metrics::Timer::start();
    for attempt_no in 0.. {
        if attempt_no >= MIN_ATTEMPTS && tokio::time::Instant::now() >= give_up {
            break;
        }
        match attempt(inner, jobs).await {
            Attempt::Done(results, notices, parked) => {
                {
                    let mut timers = inner.timers.lock().unwrap_or_else(|e| e.into_inner());
                    for (id, at) in parked {
                        match at {
                            Some(at) => timers.insert(&id, at),
                            None => timers.remove(&id),
                        }
                    }
                }
                for notice in notices {
                    inner.announce(notice);
                }
                crate::metrics::commit_group(crate::metrics::Backend::Postgres, jobs.len(), timer);
                return results;
            }
            Attempt::Retry(e) => {
                tracing::debug!(durable.error = %e, "group commit retried");
                last = Some(e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Attempt::Fail(e) => {
                last = Some(e);
                break;
            }
        }
    }
    let error = last.unwrap_or(Error::Store(StoreError::Closed));
    tracing::warn!(durable.error = %error, durable.writes = jobs.len(), "group commit failed; its writes are not durable");
    jobs.iter().map(|_| Err(error.clone())).collect()
}

/// Whether a database error leaves a transaction worth retrying.
pub(super) fn retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let code = code.code();
            code == "40001" || code == "40P01" || code.starts_with("08") || code == "57P01"
        }
        // No server answer: the connection broke before the transaction
        // could commit (callers check COMMIT separately).
        None => true,
    }
}

async fn attempt(inner: &Inner, jobs: &[Job]) -> Attempt {
    let conn = match inner.conn().await {
        Ok(conn) => conn,
        Err(e) => return Attempt::Retry(e),
    };
    let me = inner.me();
    let mut txid: Option<i64> = None;
    #[cfg(test)]
    let fault = inner
        .committer
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front();
    #[cfg(not(test))]
    let fault: Option<()> = None;
    if let ([job], None) = (jobs, fault)
        && let Prepared::Checkpoint(cp, progress) = &job.write
    {
        return lone_checkpoint(inner, &conn, job, cp, *progress, me).await;
    }
    // An injected fault goes between the writes and COMMIT.
    #[cfg(test)]
    let commit_with_writes = fault.is_none();
    #[cfg(not(test))]
    let commit_with_writes = true;
    let body = async {
        let decided =
            super::batch::decide_and_write(inner, &conn, jobs, me, &mut txid, commit_with_writes)
                .await?;
        #[cfg(test)]
        match fault {
            Some(Fault::KillBeforeCommit) => {
                conn.batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
                    .await?;
            }
            Some(Fault::Serialization) => {
                conn.batch_execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
                )
                .await?;
            }
            _ => {}
        }
        Ok(decided)
    }
    .await;
    let (decided, committed) = match body {
        Ok(decided) => decided,
        Err(e) => {
            let retry = retryable(&e);
            let _ = deadpool_postgres::Object::take(conn);
            let e = io("write a group of checkpoints")(e);
            return if retry {
                Attempt::Retry(e)
            } else {
                Attempt::Fail(e)
            };
        }
    };
    let committed = match committed {
        Some(committed) => committed,
        None => conn.batch_execute("COMMIT").await,
    };
    #[cfg(test)]
    if committed.is_ok() && matches!(fault, Some(Fault::LoseCommitAck)) {
        let _ = deadpool_postgres::Object::take(conn);
        return match resolve(inner, txid).await {
            Some(true) => Attempt::Done(decided.0, decided.1, decided.2),
            Some(false) => Attempt::Retry(io("commit")(injected_error())),
            None => Attempt::Fail(io("commit")(injected_error())),
        };
    }
    match committed {
        Ok(()) => Attempt::Done(decided.0, decided.1, decided.2),
        Err(e) if e.as_db_error().is_some() => {
            let retry = retryable(&e);
            let _ = deadpool_postgres::Object::take(conn);
            let e = io("commit a group of checkpoints")(e);
            if retry {
                Attempt::Retry(e)
            } else {
                Attempt::Fail(e)
            }
        }
        Err(e) => {
            // The connection broke during COMMIT: ask the server what
            // became of the transaction.
            let _ = deadpool_postgres::Object::take(conn);
            let e = io("commit a group of checkpoints")(e);
            match resolve(inner, txid).await {
                Some(true) => Attempt::Done(decided.0, decided.1, decided.2),
                Some(false) => Attempt::Retry(e),
                None => Attempt::Fail(e),
            }
        }
    }
}

#[cfg(test)]
fn injected_error() -> tokio_postgres::Error {
    // Any error without a server answer will do.
    tokio_postgres::Error::__private_api_timeout()
}

/// A lone checkpoint's statement (see [`lone_checkpoint`]): one row
/// written if the fence holds, none if not.
const LONE_CHECKPOINT: &str =
    "INSERT INTO {s}.checkpoints (instance_id, key, name, ended_wait, record)
     SELECT id, $4, $5, $6, $7 FROM {s}.instances
     WHERE id = $1 AND epoch = $2 AND owner = $3 FOR SHARE
     ON CONFLICT (instance_id, key) DO UPDATE
       SET record = EXCLUDED.record, ended_wait = EXCLUDED.ended_wait";

/// [`LONE_CHECKPOINT`] that also sets the count of resumes without
/// progress back to 0; answers 1 if the fence held, 0 if not.
const LONE_CHECKPOINT_RESETTING: &str = "WITH l AS (
         SELECT id, epoch, owner, recoveries FROM {s}.instances
         WHERE id = $1 FOR SHARE),
     f AS (SELECT id, recoveries FROM l WHERE epoch = $2 AND owner = $3),
     r AS (
         UPDATE {s}.instances i SET recoveries = 0
         FROM f WHERE i.id = f.id AND f.recoveries <> 0),
     c AS (
         INSERT INTO {s}.checkpoints (instance_id, key, name, ended_wait, record)
         SELECT f.id, $4, $5, $6, $7 FROM f
         ON CONFLICT (instance_id, key) DO UPDATE
           SET record = EXCLUDED.record, ended_wait = EXCLUDED.ended_wait)
     SELECT count(*) FROM f";

/// A lone checkpoint: one statement, fence and upsert, in its own transaction
/// (one round trip, like an INSERT), planned once per connection (the row is
/// found by its id alone, so that a generic plan takes the primary key). The
/// fence is a share lock on the instance's row, taken only if the row still
/// has this owner's epoch (a takeover or cancel waits for it, and this
/// statement sees theirs): no new row version of the instance. With
/// `progress` (the count of resumes without progress must go back to 0) the
/// statement also updates that count, in a longer form that costs about a
/// sixth more, so only then. A broken connection leaves its outcome unknown,
/// and that is safe to retry: the statement is idempotent (it writes the same
/// record under the same fence; if the first try committed and the lease
/// moved since, the retry is refused with `LeaseLost`, and the new owner
/// replays the checkpoint).
async fn lone_checkpoint(
    inner: &Inner,
    conn: &deadpool_postgres::Object,
    job: &Job,
    cp: &Cp,
    progress: bool,
    me: i64,
) -> Attempt {
    let written = async {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &job.id,
            &job.epoch,
            &me,
            &cp.key,
            &cp.name,
            &cp.ended_wait,
            &cp.bytes,
        ];
        if !progress {
            let statement = conn.prepare_cached(&inner.sql(LONE_CHECKPOINT)).await?;
            return Ok(conn.execute(&statement, &params).await? == 1);
        }
        let statement = conn
            .prepare_cached(&inner.sql(LONE_CHECKPOINT_RESETTING))
            .await?;
        let row = conn.query_one(&statement, &params).await?;
        Ok::<bool, tokio_postgres::Error>(row.get::<_, i64>(0) == 1)
    }
    .await;
    match written {
        Ok(true) => Attempt::Done(vec![Ok(Committed::Written)], Vec::new(), Vec::new()),
        Ok(false) => Attempt::Done(
            vec![Err(Error::Instance(InstanceError::LeaseLost {
                instance: job.id.clone(),
                epoch: job.epoch as u64,
            }))],
            Vec::new(),
            Vec::new(),
        ),
        Err(e) => {
            let retry = retryable(&e);
            let e = io("write a checkpoint")(e);
            if retry {
                Attempt::Retry(e)
            } else {
                Attempt::Fail(e)
            }
        }
    }
}

/// Whether transaction `txid` committed: `None` when that cannot be known.
async fn resolve(inner: &Inner, txid: Option<i64>) -> Option<bool> {
    let txid = txid?;
    for _ in 0..100 {
        let status: Option<String> = match inner.conn().await {
            Ok(conn) => match conn.query_one("SELECT txid_status($1)", &[&txid]).await {
                Ok(row) => row.get(0),
                Err(_) => None,
            },
            Err(_) => None,
        };
        match status.as_deref() {
            Some("committed") => return Some(true),
            Some("aborted") => return Some(false),
            // In progress (the server has not noticed the broken
            // connection yet), or the server is unreachable: ask again.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}
