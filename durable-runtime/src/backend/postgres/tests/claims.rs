//! Creation and claims.

use std::collections::HashSet;

use super::*;
use crate::backend::{ClaimKind, Committed, Write};
use crate::records::TransitionRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_creators_of_one_id_make_exactly_one_new_instance() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(Arc::new(db.backend().await));
    }
    for round in 0..5 {
        let id = format!("same-{round}");
        let creators = (0..16).map(|i| {
            let backend = Arc::clone(&backends[i % 4]);
            let id = id.clone();
            tokio::spawn(async move { backend.create(&id, &record("wf", 5)).await })
        });
        let mut new = 0;
        for creator in creators {
            match creator.await.unwrap().unwrap() {
                Created::New(lease) => {
                    assert_eq!(lease.epoch, 1);
                    new += 1;
                }
                Created::Exists(existing) => assert_eq!(existing.workflow, "wf"),
                Created::Unclaimed => panic!("created owned"),
            }
        }
        assert_eq!(new, 1, "round {round}");
    }
    for backend in backends {
        backend.close().await;
    }
}

/// A pure client's starts: one statement records the new instances
/// unowned (no release after), existing ones are answered as such, and a
/// worker claims the new ones at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_creates_are_left_for_the_workers() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let client = db.backend().await;
    let worker = db.backend().await;
    let _lease = create(&worker, "old").await;
    let items: Vec<(String, InstanceRecord)> = ["a", "old", "b"]
        .iter()
        .map(|id| (id.to_string(), record("wf", 7)))
        .collect();
    let created = client.create_unclaimed(&items).await.unwrap();
    assert!(matches!(created[0], Created::Unclaimed));
    assert!(matches!(created[1], Created::Exists(_)));
    assert!(matches!(created[2], Created::Unclaimed));
    let sql = db.client().await;
    let owners: Vec<Option<i64>> = sql
        .query("SELECT owner FROM instances WHERE id IN ('a', 'b')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec![None, None]);
    let claims = worker.claim_due(&[("wf", 1)], 10).await.unwrap().claims;
    // Nothing stored to replay: the worker reads no checkpoint first.
    assert!(claims.iter().all(|c| c.kind == ClaimKind::Unstarted));
    let mut claimed: Vec<String> = claims.into_iter().map(|c| c.id).collect();
    claimed.sort();
    assert_eq!(claimed, ["a", "b"]);
    client.close().await;
    worker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_never_claim_one_instance_twice() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let creator = db.backend().await;
    const N: usize = 300;
    for i in 0..N {
        let id = format!("i{i:04}");
        let lease = create(&creator, &id).await;
        creator.release(&id, lease).await.unwrap();
    }
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(Arc::new(db.backend().await));
    }
    let claimers = workers.iter().map(|w| {
        let w = Arc::clone(w);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claims = w
                    .claim_due(&[("wf", 1), ("other", 1)], 7)
                    .await
                    .unwrap()
                    .claims;
                if claims.is_empty() {
                    return mine;
                }
                for claim in claims {
                    assert_eq!(claim.kind, ClaimKind::Recover);
                    assert_eq!(claim.lease.epoch, 2);
                    assert_eq!(claim.record.input, vec![1, 2, 3]);
                    mine.push(claim.id);
                }
            }
        })
    });
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), N, "every instance claimed");
    assert_eq!(distinct.len(), N, "no instance claimed twice");
    // Unregistered workflows are not claimed; owned instances neither.
    assert!(
        workers[0]
            .claim_due(&[("none", 1)], 10)
            .await
            .unwrap()
            .claims
            .is_empty()
    );
    assert!(workers[0].claim("i0000").await.unwrap().is_none());
    for w in workers {
        w.close().await;
    }
    creator.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_timer_is_claimed_as_a_wake_up_on_the_engine_clock() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let b = db.backend().await;
    let now = db.clock.now_ms();
    let lease = create(&a, "sleeper").await;
    // A step before the sleep: the woken instance has a checkpoint to
    // replay.
    let written = a
        .commit(
            "sleeper",
            lease,
            Write::Checkpoint {
                record: step("before", 0, 1),
                progress: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(written, Committed::Written);
    let parked = a
        .commit("sleeper", lease, Write::Park(sleep_park(now + 60_000)))
        .await
        .unwrap();
    assert_eq!(parked, Committed::Written);
    assert_eq!(a.next_due(), Some(now + 60_000));
    assert_eq!(
        a.park_of("sleeper").await.unwrap(),
        Some(sleep_park(now + 60_000))
    );
    // Parked: nobody owns it, and it is neither due nor claimable by id.
    assert!(
        b.claim_due(&[("wf", 1)], 10)
            .await
            .unwrap()
            .claims
            .is_empty()
    );
    assert!(b.claim("sleeper").await.unwrap().is_none());
    // The parker's write after its park is refused.
    assert!(
        a.commit(
            "sleeper",
            lease,
            Write::Checkpoint {
                record: step("s", 0, 1),
                progress: true
            }
        )
        .await
        .is_err()
    );
    db.clock.advance(Duration::from_secs(60));
    let claims = b.claim_due(&[("wf", 1)], 10).await.unwrap().claims;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].kind, ClaimKind::Wake);
    assert!(claims[0].lease.epoch > lease.epoch);
    assert_eq!(b.park_of("sleeper").await.unwrap(), None);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_instance_is_retried_once_its_worker_is_gone() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let b = db.backend().await;
    let lease = create(&a, "stuck").await;
    let mut blocked = record("wf", 1_000);
    blocked.state = InstanceState::Blocked {
        error: "a step's value does not decode".into(),
    };
    blocked.transitions.push(TransitionRecord {
        at_ms: 2_000,
        kind: crate::records::TransitionKind::Blocked { error: "x".into() },
    });
    a.commit(
        "stuck",
        lease,
        Write::Record {
            record: blocked,
            active: Some(1),
            appended: None,
        },
    )
    .await
    .unwrap();
    // Its blocker is alive: not retried by the claim loop...
    assert!(
        b.claim_due(&[("wf", 1)], 10)
            .await
            .unwrap()
            .claims
            .is_empty()
    );
    // ...but claimable by id (an attach or `Engine::resume`).
    let claim = b.claim("stuck").await.unwrap().expect("claimable by id");
    assert_eq!(claim.kind, ClaimKind::Recover);
    assert_eq!(claim.recoveries, 1);
    assert!(matches!(claim.record.state, InstanceState::Blocked { .. }));
    b.release("stuck", claim.lease).await.unwrap();
    a.close().await;
    let claims = b.claim_due(&[("wf", 1)], 10).await.unwrap().claims;
    assert_eq!(claims.len(), 1, "retried once its blocker is gone");
    b.close().await;
}
