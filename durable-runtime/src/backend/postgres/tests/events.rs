//! Events, timeouts and wake-up hints across processes.

use std::sync::Mutex;

use super::*;
use crate::backend::{ClaimKind, Committed, Write};
use crate::records::CheckpointState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_a_parked_instance_makes_it_claimable_as_a_wake_up() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let owner = db.backend().await;
    let sender = db.backend().await;
    let lease = create(&owner, "w").await;
    let parked = owner
        .commit("w", lease, Write::Park(wait_park("approve", 0, None)))
        .await
        .unwrap();
    assert_eq!(parked, Committed::Written);
    assert!(
        sender
            .claim_due(&[("wf", 1)], 10)
            .await
            .unwrap()
            .claims
            .is_empty()
    );

    let seen = Mutex::new(None);
    let seq = sender
        .send_event("w", "approve", event(5), &|record, _, waiting, _| {
            assert_eq!(record.workflow, "wf");
            *seen.lock().unwrap() = Some(waiting.map(str::to_string));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(seq, 0);
    assert_eq!(
        *seen.lock().unwrap(),
        Some(Some("T".to_string())),
        "the wait's type"
    );
    assert_eq!(
        sender
            .event("w", "approve", 0)
            .await
            .unwrap()
            .unwrap()
            .sent_at_ms,
        5
    );
    assert_eq!(
        sender.events_of("w").await.unwrap(),
        vec![("approve".to_string(), 1, "T".to_string())]
    );
    let claims = owner.claim_due(&[("wf", 1)], 10).await.unwrap().claims;
    assert_eq!(claims.len(), 1);
    // A wake-up, with no checkpoint stored before the wait.
    assert_eq!(claims[0].kind, ClaimKind::Unstarted);

    // The next event of the name: number 1, not awaited (no type to check).
    let seq = sender
        .send_event("w", "approve", event(6), &|_, _, waiting, _| {
            assert_eq!(waiting, None);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(seq, 1);
    // A check that refuses stores nothing.
    let refused = sender
        .send_event("w", "approve", event(7), &|_, _, _, _| {
            Err(crate::error::Error::Usage(
                crate::error::UsageError::NotFound {
                    id: "refused".into(),
                },
            ))
        })
        .await;
    assert!(refused.is_err());
    assert_eq!(sender.events_of("w").await.unwrap().len(), 2);

    // Parking on an event already stored is refused: the lease holds.
    let lease = claims[0].lease;
    let early = owner
        .commit("w", lease, Write::Park(wait_park("approve", 1, None)))
        .await
        .unwrap();
    assert_eq!(early, Committed::EventFirst);
    let still_owned = owner
        .commit(
            "w",
            lease,
            Write::Checkpoint {
                record: step("s", 0, 1),
                progress: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(still_owned, Committed::Written);
    owner.close().await;
    sender.close().await;
}

fn timed_out(name: &str) -> crate::records::CheckpointRecord {
    let mut record = step(name, 0, 0);
    record.state = CheckpointState::TimedOut { finished_at_ms: 3 };
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_and_an_event_racing_have_exactly_one_winner() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let owner = Arc::new(db.backend().await);
    let sender = Arc::new(db.backend().await);
    let now = db.clock.now_ms();
    let (mut timeouts, mut events) = (0, 0);
    for round in 0..40 {
        let id = format!("race{round}");
        let lease = create(&owner, &id).await;
        owner
            .commit(&id, lease, Write::Park(wait_park("w", 0, Some(now))))
            .await
            .unwrap();
        let claims = owner.claim_due(&[("wf", 1)], 1).await.unwrap().claims;
        assert_eq!(claims.len(), 1);
        // A wake-up, with no checkpoint stored before the wait.
        assert_eq!(claims[0].kind, ClaimKind::Unstarted);
        let lease = claims[0].lease;
        let timeout = {
            let (owner, id) = (Arc::clone(&owner), id.clone());
            tokio::spawn(async move {
                owner
                    .commit(
                        &id,
                        lease,
                        Write::TimeOut {
                            record: timed_out("w"),
                        },
                    )
                    .await
            })
        };
        let send = {
            let (sender, id) = (Arc::clone(&sender), id.clone());
            tokio::spawn(async move {
                sender
                    .send_event(&id, "w", event(1), &|_, _, _, _| Ok(()))
                    .await
            })
        };
        let timeout = timeout.await.unwrap().unwrap();
        let seq = send.await.unwrap().unwrap();
        let event_won = seq == 0;
        let timeout_won = timeout == Committed::Written;
        assert!(
            event_won != timeout_won,
            "round {round}: {timeout:?}, event number {seq}"
        );
        if timeout_won {
            timeouts += 1;
            assert_eq!(seq, 1, "an event after the timeout is the next one");
        } else {
            events += 1;
            assert!(owner.checkpoints(&id).await.unwrap().is_empty());
        }
    }
    eprintln!("timeout/event race: {timeouts} timeouts won, {events} events won");
    owner.close().await;
    sender.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_cross_processes_and_polling_survives_a_cut_listener() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let mut listening = TestDb::options();
    listening.listen = true;
    listening.poll = Duration::from_millis(100);
    listening.poll_listening = Duration::from_secs(3600);
    let a = db.backend_with(listening).await;
    let b = db.backend().await;
    assert!(
        a.inner()
            .listening
            .load(std::sync::atomic::Ordering::SeqCst),
        "self-test"
    );
    let mut rx = a.subscribe();

    // A hint from another process arrives through LISTEN (polling is
    // hourly here, so only the listener can bring it).
    create(&b, "x").await;
    b.send_event("x", "go", event(1), &|_, _, _, _| Ok(()))
        .await
        .unwrap();
    notice(&mut rx, |n| {
        *n == Notice::Event {
            id: "x".into(),
            name: "go".into(),
        }
    })
    .await;

    // Cut the listener: it reconnects and says Ready for the hole.
    let pid = a
        .inner()
        .listener_pid
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_ne!(pid, 0);
    db.client()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    notice(&mut rx, |n| *n == Notice::Ready).await;
    until(|| async {
        let now = a
            .inner()
            .listener_pid
            .load(std::sync::atomic::Ordering::SeqCst);
        now != 0 && now != pid
    })
    .await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_listener_polling_delivers_a_woken_instance() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await; // no listener, 50 ms poll
    let b = db.backend().await;
    let lease = create(&b, "p").await;
    b.commit("p", lease, Write::Park(wait_park("go", 0, None)))
        .await
        .unwrap();
    let mut rx = a.subscribe();
    b.send_event("p", "go", event(1), &|_, _, _, _| Ok(()))
        .await
        .unwrap();
    // The engine's claim loop: on every Ready, claim.
    let claim = tokio::time::timeout(GUARD, async {
        loop {
            notice(&mut rx, |n| *n == Notice::Ready).await;
            if let Some(claim) = a.claim_due(&[("wf", 1)], 10).await.unwrap().claims.pop() {
                return claim;
            }
        }
    })
    .await
    .expect("hang guard");
    assert_eq!(claim.id, "p");
    // A wake-up, with no checkpoint stored before the wait.
    assert_eq!(claim.kind, ClaimKind::Unstarted);
    a.close().await;
    b.close().await;
}
