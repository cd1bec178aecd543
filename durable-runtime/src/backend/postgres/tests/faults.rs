//! Faults in the middle of a group commit: retried when the transaction
//! surely did not commit, resolved by asking the server when the answer to
//! COMMIT was lost, surfaced as a store error when retries run out, and
//! never reported as a lost lease.

use super::super::commit::Fault;
use super::*;
use crate::backend::{Committed, Write};
use crate::error::{Error, StoreError};

fn inject(backend: &PgBackend, faults: &[Fault]) {
    backend
        .inner()
        .committer
        .faults
        .lock()
        .unwrap()
        .extend(faults.iter().copied());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_or_a_serialization_failure_before_commit_is_retried() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let backend = db.backend().await;
    let lease = create(&backend, "f").await;
    inject(&backend, &[Fault::KillBeforeCommit, Fault::Serialization]);
    let written = backend
        .commit(
            "f",
            lease,
            Write::Checkpoint {
                record: step("s", 0, 1),
                progress: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(written, Committed::Written);
    assert_eq!(backend.checkpoints("f").await.unwrap().len(), 1);
    assert!(backend.inner().committer.faults.lock().unwrap().is_empty());
    backend.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_answer_is_resolved_by_the_server_not_by_a_retry() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let backend = db.backend().await;
    let lease = create(&backend, "p").await;
    // A park releases the instance: a blind retry would find it released
    // and report a lost lease for a write that was made.
    inject(&backend, &[Fault::LoseCommitAck]);
    let parked = backend
        .commit("p", lease, Write::Park(sleep_park(u64::MAX / 2)))
        .await
        .unwrap();
    assert_eq!(parked, Committed::Written);
    assert!(backend.park_of("p").await.unwrap().is_some());
    backend.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_the_retries_are_store_errors_and_write_nothing() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    // Retries go on for one lease (a short one here), then give up.
    let backend = db
        .backend_with(PgOptions {
            lease: Duration::from_millis(600),
            ..TestDb::options()
        })
        .await;
    let lease = create(&backend, "x").await;
    inject(&backend, &[Fault::Serialization; 200]);
    let started = std::time::Instant::now();
    let failed = backend
        .commit(
            "x",
            lease,
            Write::Checkpoint {
                record: step("s", 0, 1),
                progress: true,
            },
        )
        .await;
    match failed {
        Err(Error::Store(e @ StoreError::Io { .. })) => {
            assert!(e.to_string().contains("40001"), "{e}");
            // The database's error is the source, with its SQLSTATE.
            let code = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
                .and_then(|db| db.code().cloned());
            assert_eq!(
                code,
                Some(tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
            );
        }
        other => panic!("not a store error: {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "gave up before the lease ran out"
    );
    let left = {
        let mut faults = backend.inner().committer.faults.lock().unwrap();
        let left = faults.len();
        faults.clear();
        left
    };
    assert!(left > 0 && left < 200 - 2, "{} attempts", 200 - left);
    assert!(backend.checkpoints("x").await.unwrap().is_empty());
    // Nothing is poisoned and the lease still holds.
    assert!(backend.failure().is_none());
    let written = backend
        .commit(
            "x",
            lease,
            Write::Checkpoint {
                record: step("s", 0, 2),
                progress: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(written, Committed::Written);
    backend.close().await;
}
