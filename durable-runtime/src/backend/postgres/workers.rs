//! Workers and their leases: one `workers` row per process start, renewed
//! on the database's clock; a reaper in every worker declares expired
//! workers dead and releases their instances in the same statement.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::backend::Notice;
use crate::error::Result;

use super::Cached;
use super::{Inner, io, notify::jitter, pool_error};

/// Registers this process as a new worker; returns its id.
pub(super) async fn register(pool: &Pool, quoted: &str, lease: Duration) -> Result<i64> {
    let conn = pool.get().await.map_err(pool_error)?;
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let row = conn
        .query_one(
            &format!(
                "INSERT INTO {quoted}.workers (host, pid, lease_until)
                 VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING id"
            ),
            &[&host, &(std::process::id() as i32), &lease.as_secs_f64()],
        )
        .await
        .map_err(io("register the worker"))?;
    Ok(row.get(0))
}

impl Inner {
    /// Renews this worker's lease. A worker that was declared dead (its
    /// lease ran out) has lost every instance it held: it goes on as a new
    /// worker, so that every later write of its old leases is refused.
    pub(super) async fn heartbeat(&self) -> Result<()> {
        let conn = self.conn().await?;
        let me = self.me();
        let sent = std::time::Instant::now();
        let renewed = conn
            .execute_cached(
                &self.sql(
                    "UPDATE {s}.workers SET lease_until = now() + make_interval(secs => $2)
                     WHERE id = $1 AND state = 0",
                ),
                &[&me, &self.options.lease.as_secs_f64()],
            )
            .await
            .map_err(io("renew the worker's lease"))?;
        if renewed == 0 {
            let sent = std::time::Instant::now();
            let fresh = register(&self.pool, &self.quoted, self.options.lease).await?;
            // Only if nobody swapped it meanwhile.
            let _ = self
                .me
                .compare_exchange(me, fresh, Ordering::SeqCst, Ordering::SeqCst);
            tracing::warn!(
                durable.worker = me,
                durable.new_worker = fresh,
                "this worker's lease ran out and other workers took over its instances; its late writes are refused; it goes on as a new worker"
            );
            self.renewed_at(sent);
        } else {
            self.renewed_at(sent);
        }
        Ok(())
    }

    /// Records a renewal sent at `sent` (never moving the mark back).
    fn renewed_at(&self, sent: std::time::Instant) {
        let mut renewed = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        if sent > *renewed {
            *renewed = sent;
        }
    }

    /// Declares dead every worker whose lease ran out more than the grace
    /// ago and releases its instances (owner gone, epoch moved), and those
    /// owned by any id that is not a live worker: a worker declared dead
    /// that has not noticed yet may still claim or create instances under
    /// its old id, which nobody would release otherwise. Then deletes the
    /// rows of workers gone for longer than the retention that hold
    /// nothing (the table does not grow with every process start). Returns
    /// how many instances were released.
    pub(super) async fn reap(&self) -> Result<u64> {
        let conn = self.conn().await?;
        let released = conn
            .execute_cached(
                &self.sql(
                    "WITH dead AS (
                         UPDATE {s}.workers SET state = 2
                         WHERE state = 0 AND lease_until < now() - make_interval(secs => $1)
                         RETURNING id)
                     UPDATE {s}.instances i SET owner = NULL, epoch = i.epoch + 1, updated_at = now()
                     WHERE i.owner IS NOT NULL
                       AND (i.owner IN (SELECT id FROM dead)
                            OR NOT EXISTS (SELECT 1 FROM {s}.workers w
                                           WHERE w.id = i.owner AND w.state = 0))",
                ),
                &[&self.options.grace().as_secs_f64()],
            )
            .await
            .map_err(io("reap expired workers"))?;
        let deleted = conn
            .execute_cached(
                &self.sql(
                    "DELETE FROM {s}.workers w
                     WHERE w.state <> 0 AND w.lease_until < now() - make_interval(secs => $1)
                       AND NOT EXISTS (SELECT 1 FROM {s}.instances i WHERE i.owner = w.id)",
                ),
                &[&self.options.worker_retention.as_secs_f64()],
            )
            .await
            .map_err(io("delete the rows of gone workers"))?;
        if deleted > 0 {
            tracing::debug!(
                durable.workers = deleted,
                "deleted the rows of gone workers"
            );
        }
        if released > 0 {
            tracing::warn!(
                durable.instances = released,
                "released the instances of workers whose lease ran out"
            );
            self.announce(Notice::Ready);
        }
        Ok(released)
    }
}

/// Renews the lease every third of it until the backend stops.
pub(super) async fn heartbeat(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        let every = inner.options.lease / 3;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        #[cfg(test)]
        if inner.heartbeat_paused.load(Ordering::SeqCst) {
            continue;
        }
        if let Err(e) = inner.heartbeat().await {
            tracing::warn!(durable.error = %e, "could not renew the worker's lease");
        }
    }
}

/// Reaps expired workers about every half lease (jittered, so that the
/// workers do not all reap at once).
pub(super) async fn reaper(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(jitter(inner.options.lease / 2, 0.2)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = inner.reap().await {
            tracing::warn!(durable.error = %e, "could not reap expired workers");
        }
    }
}

/// Stops the tasks once every queued write is written, marks the worker
/// gone and releases what it still holds.
pub(super) async fn close(inner: Arc<Inner>) {
    if inner.stop.send_replace(true) {
        return;
    }
    inner.creator.close().await;
    inner.committer.close().await;
    let me = inner.me();
    let released = async {
        let conn = inner.conn().await?;
        conn.execute_cached(
            &inner.sql(
                "WITH gone AS (UPDATE {s}.workers SET state = 3 WHERE id = $1 AND state = 0)
                 UPDATE {s}.instances SET owner = NULL, epoch = epoch + 1, updated_at = now()
                 WHERE owner = $1",
            ),
            &[&me],
        )
        .await
        .map_err(io("mark the worker gone"))
    }
    .await;
    match released {
        Ok(n) if n > 0 => inner.hints.send(Notice::Ready),
        Ok(_) => {}
        Err(e) => tracing::warn!(durable.error = %e, "could not mark the worker gone"),
    }
    inner.hints.close();
    let tasks = std::mem::take(&mut *inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
    for task in tasks {
        let _ = task.await;
    }
    inner.pool.close();
}
