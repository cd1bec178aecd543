//! Fencing: takeover after a lease ran out, cancellation, group commit
//! with a refused write among others.

use std::sync::atomic::Ordering;

use super::*;
use crate::backend::{ClaimKind, Committed, Write};
use crate::error::{Error, InstanceError};

fn lease_lost(result: &crate::error::Result<Committed>) -> Option<u64> {
    match result {
        Err(Error::Instance(InstanceError::LeaseLost { epoch, .. })) => Some(*epoch),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_past_its_lease_is_taken_over_and_its_late_writes_refused() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let b = db.backend().await;
    let lease_a = create(&a, "job").await;
    let first = Write::Checkpoint {
        record: step("one", 0, 1),
        progress: true,
    };
    assert_eq!(
        a.commit("job", lease_a, first).await.unwrap(),
        Committed::Written
    );

    // A stops renewing its lease (frozen), and the lease runs out.
    a.inner().heartbeat_paused.store(true, Ordering::SeqCst);
    let client = db.client().await;
    expire(&client, &a).await;
    assert_eq!(b.inner().reap().await.unwrap(), 1);
    let claims = b.claim_due(&[("wf", 1)], 10).await.unwrap().claims;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].kind, ClaimKind::Recover);
    let lease_b = claims[0].lease;
    assert!(lease_b.epoch > lease_a.epoch);

    // A wakes up: its write is refused; B's is written.
    let late = a
        .commit(
            "job",
            lease_a,
            Write::Checkpoint {
                record: step("two", 0, 100),
                progress: true,
            },
        )
        .await;
    assert_eq!(lease_lost(&late), Some(lease_a.epoch));
    let current = b
        .commit(
            "job",
            lease_b,
            Write::Checkpoint {
                record: step("two", 0, 200),
                progress: true,
            },
        )
        .await;
    assert_eq!(current.unwrap(), Committed::Written);
    let checkpoints = b.checkpoints("job").await.unwrap();
    let twos: Vec<u32> = checkpoints
        .iter()
        .filter(|c| c.name == "two")
        .map(|c| c.attempts)
        .collect();
    assert_eq!(twos, vec![200], "written once, by the current owner");
    assert_eq!(checkpoints.len(), 2);

    // A's next heartbeat finds it was declared dead: it goes on as a new
    // worker, and its old leases stay refused.
    let old = a.inner().me();
    a.inner().heartbeat().await.unwrap();
    assert_ne!(a.inner().me(), old);
    let again = a
        .commit(
            "job",
            lease_b,
            Write::Checkpoint {
                record: step("three", 0, 1),
                progress: false,
            },
        )
        .await;
    assert!(
        lease_lost(&again).is_some(),
        "a new worker id does not own B's lease"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_moves_the_epoch_so_the_owner_is_refused() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let owner = db.backend().await;
    let client_side = db.backend().await;
    let lease = create(&owner, "c").await;
    let mut rx = owner.subscribe();
    client_side
        .cancel("c", &|mut r: InstanceRecord| {
            r.state = InstanceState::Cancelled;
            r
        })
        .await
        .unwrap();
    let refused = owner
        .commit(
            "c",
            lease,
            Write::Checkpoint {
                record: step("s", 0, 1),
                progress: true,
            },
        )
        .await;
    assert_eq!(lease_lost(&refused), Some(lease.epoch));
    assert!(owner.checkpoints("c").await.unwrap().is_empty());
    assert_eq!(
        owner.load("c").await.unwrap().unwrap().state,
        InstanceState::Cancelled
    );
    // Cancelled is finished: no second cancel, no event, no claim.
    let again = client_side.cancel("c", &|r| r).await;
    assert!(matches!(
        again,
        Err(Error::Usage(crate::error::UsageError::InstanceFinished {
            status: "cancelled",
            ..
        }))
    ));
    let event = client_side
        .send_event("c", "e", event(1), &|_, _, _, _| Ok(()))
        .await;
    assert!(matches!(
        event,
        Err(Error::Usage(
            crate::error::UsageError::InstanceFinished { .. }
        ))
    ));
    let missing = client_side.cancel("nope", &|r| r).await;
    assert!(matches!(
        missing,
        Err(Error::Usage(crate::error::UsageError::NotFound { .. }))
    ));
    assert!(owner.claim("c").await.unwrap().is_none());
    drop(rx.try_recv());
    owner.close().await;
    client_side.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_writes_go_as_one_transaction_with_their_own_outcomes() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let backend = Arc::new(db.backend().await);
    let mut leases = Vec::new();
    for i in 0..64 {
        leases.push(create(&backend, &format!("g{i:02}")).await);
    }
    // One of them is cancelled: its owner's write must be refused alone.
    backend
        .cancel("g13", &|mut r: InstanceRecord| {
            r.state = InstanceState::Cancelled;
            r
        })
        .await
        .unwrap();
    let committer = &backend.inner().committer;
    let groups_before = committer.stats.groups.load(Ordering::SeqCst);
    let sent_before = committer.stats.sent.load(Ordering::SeqCst);
    let hold = committer.hold.lock().await;
    let writes: Vec<_> = leases
        .iter()
        .enumerate()
        .map(|(i, lease)| {
            let backend = Arc::clone(&backend);
            let lease = *lease;
            tokio::spawn(async move {
                let record = step("s", 0, i as u32);
                backend
                    .commit(
                        &format!("g{i:02}"),
                        lease,
                        Write::Checkpoint {
                            record,
                            progress: true,
                        },
                    )
                    .await
            })
        })
        .collect();
    until(|| async { committer.stats.sent.load(Ordering::SeqCst) >= sent_before + 64 }).await;
    drop(hold);
    let mut outcomes = Vec::new();
    for write in writes {
        outcomes.push(write.await.unwrap());
    }
    // The first write may have been taken before the others arrived.
    let groups = committer.stats.groups.load(Ordering::SeqCst) - groups_before;
    assert_eq!(groups, 1, "transactions for 64 overlapping writes");
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 13 {
            assert!(
                lease_lost(outcome).is_some(),
                "the cancelled instance's write"
            );
        } else {
            assert_eq!(*outcome.as_ref().unwrap(), Committed::Written, "write {i}");
            let cps = backend.checkpoints(&format!("g{i:02}")).await.unwrap();
            assert_eq!(cps.len(), 1);
            assert_eq!(cps[0].attempts, i as u32);
        }
    }
    assert!(backend.checkpoints("g13").await.unwrap().is_empty());
    backend.close().await;
}

/// A worker declared dead that has not noticed yet still creates (or
/// claims) instances under its old id; the next reap releases them, so
/// that nobody keeps an instance forever on behalf of a dead worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_taken_by_a_worker_already_declared_dead_are_released() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let b = db.backend().await;
    a.inner().heartbeat_paused.store(true, Ordering::SeqCst);
    let client = db.client().await;
    client
        .execute(
            "UPDATE workers SET lease_until = now() - interval '1 hour' WHERE id = $1",
            &[&a.inner().me()],
        )
        .await
        .unwrap();
    assert_eq!(b.inner().reap().await.unwrap(), 0, "A held nothing yet");
    // A, dead without knowing, creates an instance: it owns it.
    let lease_a = create(&a, "late").await;
    let owner: Option<i64> = client
        .query_one("SELECT owner FROM instances WHERE id = 'late'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, Some(a.inner().me()));
    // The next reap releases it with a new epoch, and another worker runs it.
    assert_eq!(b.inner().reap().await.unwrap(), 1);
    let claims = b.claim_due(&[("wf", 1)], 10).await.unwrap().claims;
    assert_eq!(claims.len(), 1);
    assert!(claims[0].lease.epoch > lease_a.epoch);
    let late = a
        .commit(
            "late",
            lease_a,
            Write::Checkpoint {
                record: step("one", 0, 1),
                progress: true,
            },
        )
        .await;
    assert_eq!(lease_lost(&late), Some(lease_a.epoch));
    a.close().await;
    b.close().await;
}

/// A transaction of a worker frozen between two statements (its row locks
/// held) is ended by the server after a lease, so that the reaper, which
/// updates the rows it locked, is not blocked for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_idle_past_the_lease_is_ended_by_the_server() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let options = PgOptions {
        lease: Duration::from_millis(500),
        ..TestDb::options()
    };
    let a = db.backend_with(options).await;
    let _lease = create(&a, "held").await;
    // A transaction begun as the group commit begins its own, left idle
    // with the instance's row locked: the process froze.
    let conn = a.inner().conn().await.unwrap();
    conn.batch_execute(&format!("BEGIN; {}", a.inner().group_tx_settings()))
        .await
        .unwrap();
    conn.execute(
        &a.inner()
            .sql("UPDATE {s}.instances SET updated_at = now() WHERE id = 'held'"),
        &[],
    )
    .await
    .unwrap();
    // Another session can update the row once the server ended that one.
    let client = db.client().await;
    tokio::time::timeout(
        GUARD,
        client.execute(
            "UPDATE instances SET updated_at = now() WHERE id = 'held'",
            &[],
        ),
    )
    .await
    .expect("the idle transaction was ended by the server")
    .unwrap();
    assert!(
        conn.batch_execute("SELECT 1").await.is_err(),
        "the frozen session is gone"
    );
    drop(conn);
    a.close().await;
}

/// A worker whose lease is not surely current starts no step body: the
/// wait before a body ends when the lease is renewed, and with `LeaseLost`
/// once the worker was declared dead (it goes on under a new id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_starts_on_a_lease_that_may_have_run_out() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let b = db.backend().await;
    let lease = create(&a, "job").await;
    assert!(a.hold("job", lease).is_none(), "a fresh lease is current");
    // The heartbeat is driven by hand below.
    a.inner().heartbeat_paused.store(true, Ordering::SeqCst);
    let stale =
        || *a.inner().renewed.lock().unwrap() = std::time::Instant::now() - Duration::from_secs(60);

    // Not renewed for a lease (frozen, or the database unreachable): a
    // body waits.
    stale();
    let mut held = a.hold("job", lease).expect("a wait");
    tokio::select! {
        _ = &mut held => panic!("the wait ended while the lease was not renewed"),
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    // Renewed: the wait ends, the body may start.
    a.inner().heartbeat().await.unwrap();
    guard(held).await.expect("renewed");
    assert!(a.hold("job", lease).is_none());

    // Declared dead meanwhile: the renewal finds out, and the wait ends
    // with LeaseLost.
    let client = db.client().await;
    expire(&client, &a).await;
    assert_eq!(b.inner().reap().await.unwrap(), 1);
    stale();
    let held = a.hold("job", lease).expect("a wait");
    a.inner().heartbeat().await.unwrap();
    match guard(held).await {
        Err(Error::Instance(InstanceError::LeaseLost { epoch, .. })) => {
            assert_eq!(epoch, lease.epoch)
        }
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    // A lease the new worker id was granted holds again.
    let fresh = create(&a, "job-2").await;
    assert!(a.hold("job-2", fresh).is_none());
    a.close().await;
    b.close().await;
}

/// Awaits `f` under a generous hang guard.
async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("hung")
}

/// Makes `worker`'s lease run out an hour ago (as if it had been frozen).
/// The `workers` table does not grow with every process start: the rows
/// of gone workers that hold nothing are deleted after the retention, and
/// an id whose row is gone cannot keep an instance (a zombie that claims
/// under it is released at the next reap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_gone_workers_are_deleted_and_their_ids_hold_nothing() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db
        .backend_with(PgOptions {
            worker_retention: Duration::from_secs(60),
            ..TestDb::options()
        })
        .await;
    let client = db.client().await;
    for _ in 0..5 {
        db.backend().await.close().await;
    }
    let z = db.backend().await;
    let z_id = z.inner().me();
    let _held = create(&z, "held").await;
    z.inner().heartbeat_paused.store(true, Ordering::SeqCst);
    // Its lease ran out (past the grace), less than the retention ago.
    client
        .execute(
            "UPDATE workers SET lease_until = now() - interval '20 seconds' WHERE id = $1",
            &[&z_id],
        )
        .await
        .unwrap();
    assert_eq!(workers(&client).await, 7);

    // Within the retention: z is declared dead and its instance released;
    // no row goes yet.
    assert_eq!(a.inner().reap().await.unwrap(), 1);
    assert_eq!(workers(&client).await, 7);

    // Past it (the leases of the gone ones ran out long ago): only the
    // live worker's row is left.
    client
        .execute(
            "UPDATE workers SET lease_until = now() - interval '2 minutes' WHERE state <> 0",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(a.inner().reap().await.unwrap(), 0);
    assert_eq!(workers(&client).await, 1);

    // The zombie wakes and claims under its old id, whose row is gone:
    // the next reap releases the instance.
    client
        .execute(
            "UPDATE instances SET owner = $1 WHERE id = 'held'",
            &[&z_id],
        )
        .await
        .unwrap();
    assert_eq!(a.inner().reap().await.unwrap(), 1);
    let owner: Option<i64> = client
        .query_one("SELECT owner FROM instances WHERE id = 'held'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, None);
    a.close().await;
}

async fn workers(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM workers", &[])
        .await
        .unwrap()
        .get(0)
}

async fn expire(client: &tokio_postgres::Client, worker: &PgBackend) {
    client
        .execute(
            "UPDATE workers SET lease_until = now() - interval '1 hour' WHERE id = $1",
            &[&worker.inner().me()],
        )
        .await
        .unwrap();
}

/// A lone checkpoint has two statements: a plain one, and one that also
/// sets the count of resumes without progress back to 0 (`progress`).
/// Both write under the fence, and only the second touches the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_forms_of_a_lone_checkpoint_are_fenced_and_only_progress_resets_the_count() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let client = db.client().await;
    let lease = create(&a, "r").await;
    let recoveries = async || -> i32 {
        client
            .query_one("SELECT recoveries FROM instances WHERE id = 'r'", &[])
            .await
            .unwrap()
            .get(0)
    };
    // As stored before a resume.
    client
        .execute("UPDATE instances SET recoveries = 2 WHERE id = 'r'", &[])
        .await
        .unwrap();
    let write = |name: &str, progress: bool| Write::Checkpoint {
        record: step(name, 0, 1),
        progress,
    };
    let plain = a.commit("r", lease, write("one", false)).await;
    assert_eq!(plain.unwrap(), Committed::Written);
    assert_eq!(recoveries().await, 2, "a plain checkpoint keeps the count");
    let resetting = a.commit("r", lease, write("two", true)).await;
    assert_eq!(resetting.unwrap(), Committed::Written);
    assert_eq!(recoveries().await, 0, "progress sets the count back to 0");

    // Taken over (the epoch moved): both forms are refused, write nothing.
    client
        .execute("UPDATE instances SET epoch = epoch + 1 WHERE id = 'r'", &[])
        .await
        .unwrap();
    client
        .execute("UPDATE instances SET recoveries = 3 WHERE id = 'r'", &[])
        .await
        .unwrap();
    for progress in [false, true] {
        let late = a.commit("r", lease, write("three", progress)).await;
        assert_eq!(lease_lost(&late), Some(lease.epoch), "progress {progress}");
    }
    assert_eq!(recoveries().await, 3, "a refused write leaves the count");
    let names: Vec<String> = a
        .checkpoints("r")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["one", "two"]);
    a.close().await;
}
