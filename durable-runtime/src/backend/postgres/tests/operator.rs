//! Operator actions: fork (create with checkpoints), reopen, pause and
//! unpause, purge.

use std::sync::Mutex;

use super::*;
use crate::backend::{ClaimKind, Committed, Write};
use crate::error::{Error, InstanceError, UsageError};
use crate::listing::{ListFilter, StatusKind};
use crate::records::{TransitionKind, TransitionRecord};

/// `record` with a transition `kind` at `at_ms`.
fn with(mut record: InstanceRecord, kind: TransitionKind, at_ms: u64) -> InstanceRecord {
    record.transitions.push(TransitionRecord { at_ms, kind });
    record
}

fn failed_step(name: &str) -> CheckpointRecord {
    let mut c = step(name, 0, 3);
    c.state = CheckpointState::Done {
        finished_at_ms: 2,
        ok: false,
        type_name: "u32".into(),
        fingerprint: 7,
        outcome: vec![],
        error_text: Some("boom".into()),
    };
    c
}

/// Finishes `id` (owned with `lease`) in `state`, its last transition at `at_ms`.
async fn finish(backend: &PgBackend, id: &str, lease: Lease, state: InstanceState, at_ms: u64) {
    let mut record = with(record("wf", 1_000), TransitionKind::Completed, at_ms);
    record.state = state;
    let write = Write::Record {
        record,
        active: None,
        appended: None,
    };
    assert_eq!(
        backend.commit(id, lease, write).await.unwrap(),
        Committed::Written
    );
}

fn pause_update(paused: bool) -> impl Fn(InstanceRecord) -> Option<InstanceRecord> + Send + Sync {
    move |r: InstanceRecord| {
        if r.paused_since().is_some() == paused {
            return None;
        }
        let kind = if paused {
            TransitionKind::Paused { by: "op".into() }
        } else {
            TransitionKind::Unpaused { by: "op".into() }
        };
        Some(with(r, kind, 2_000))
    }
}

async fn claim_ids(backend: &PgBackend) -> Vec<String> {
    let mut ids: Vec<String> = backend
        .claim_due(&[("wf", 1)], 100)
        .await
        .unwrap()
        .claims
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_is_written_with_its_checkpoints_at_once() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let kept = vec![step("one", 0, 1), step("two", 0, 1)];
    let lease = match a.create_with("fork", &record("wf", 1_000), &kept).await {
        Ok(Created::New(lease)) => lease,
        other => panic!("not new: {other:?}"),
    };
    let stored = a.checkpoints("fork").await.unwrap();
    let names = |cs: &[CheckpointRecord]| -> Vec<(String, u32)> {
        cs.iter().map(|c| (c.name.clone(), c.attempts)).collect()
    };
    assert_eq!(names(&stored), names(&kept));
    // The forked instance is owned by its creator, who writes on.
    let next = Write::Checkpoint {
        record: step("three", 0, 1),
        progress: true,
    };
    assert_eq!(
        a.commit("fork", lease, next).await.unwrap(),
        Committed::Written
    );
    // Again: the existing one is answered, and nothing is written.
    let again = a
        .create_with("fork", &record("other", 2_000), &[step("x", 0, 9)])
        .await
        .unwrap();
    assert!(matches!(again, Created::Exists(r) if r.workflow == "wf"));
    assert_eq!(a.checkpoints("fork").await.unwrap().len(), 3);
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopening_fences_the_old_owner_and_leaves_the_instance_runnable() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let b = db.backend().await;
    let lease = create(&a, "job").await;
    for record in [step("one", 0, 1), failed_step("two")] {
        let write = Write::Checkpoint {
            record,
            progress: true,
        };
        a.commit("job", lease, write).await.unwrap();
    }
    let seen = Mutex::new(Vec::new());
    let decide = |record: InstanceRecord, checkpoints: Vec<CheckpointRecord>| {
        seen.lock()
            .unwrap()
            .extend(checkpoints.iter().map(|c| c.name.clone()));
        let set_aside: Vec<CheckpointRecord> = checkpoints
            .into_iter()
            .filter(|c| c.name == "two")
            .collect();
        let kind = TransitionKind::Retried {
            by: "op".into(),
            set_aside: None,
        };
        Ok(Some((with(record, kind, 3_000), set_aside)))
    };
    assert!(a.reopen("job", &decide).await.unwrap());
    assert_eq!(*seen.lock().unwrap(), vec!["one", "two"]);

    // The old owner's write is refused: the epoch moved.
    let late = Write::Checkpoint {
        record: step("late", 0, 1),
        progress: true,
    };
    match a.commit("job", lease, late).await {
        Err(Error::Instance(InstanceError::LeaseLost { epoch, .. })) => {
            assert_eq!(epoch, lease.epoch)
        }
        other => panic!("not refused: {other:?}"),
    }
    let names: Vec<String> = a
        .checkpoints("job")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["one"], "the failed step was set aside");
    // Unowned and runnable: claimed as a wake-up, with a newer epoch.
    let claims = b.claim_due(&[("wf", 1)], 10).await.unwrap().claims;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].kind, ClaimKind::Wake);
    assert_eq!(claims[0].recoveries, 0);
    assert!(claims[0].lease.epoch > lease.epoch + 1);
    assert!(matches!(
        claims[0].record.transitions.last().map(|t| &t.kind),
        Some(TransitionKind::Retried { .. })
    ));
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_instance_reopened_is_unfinished_and_nothing_is_done_when_decide_declines() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let lease = create(&a, "done").await;
    let failed = InstanceState::Failed {
        error: "boom".into(),
    };
    finish(&a, "done", lease, failed, 1_500).await;
    assert!(a.unfinished().await.unwrap().is_empty());

    // Declined: nothing is written.
    let decline = |_: InstanceRecord, _: Vec<CheckpointRecord>| Ok(None);
    assert!(!a.reopen("done", &decline).await.unwrap());
    assert!(claim_ids(&a).await.is_empty());
    // Refused by decide: its error, nothing written.
    let refuse = |_: InstanceRecord, _: Vec<CheckpointRecord>| {
        Err(Error::Usage(UsageError::NotFound { id: "x".into() }))
    };
    assert!(a.reopen("done", &refuse).await.is_err());
    assert!(claim_ids(&a).await.is_empty());
    let missing = a.reopen("nobody", &decline).await;
    assert!(matches!(
        missing,
        Err(Error::Usage(UsageError::NotFound { .. }))
    ));

    let reopen = |mut record: InstanceRecord, _: Vec<CheckpointRecord>| {
        record.state = InstanceState::Running;
        let kind = TransitionKind::Reopened {
            by: "op".into(),
            from: "failed".into(),
        };
        Ok(Some((with(record, kind, 1_000), Vec::new())))
    };
    assert!(a.reopen("done", &reopen).await.unwrap());
    assert_eq!(a.unfinished().await.unwrap(), vec!["done".to_string()]);
    // Unfinished again: a purge leaves it alone, however old.
    assert_eq!(a.purge(u64::MAX / 2).await.unwrap(), 0);
    assert_eq!(claim_ids(&a).await, vec!["done".to_string()]);
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_keeps_due_and_woken_instances_from_claims_until_unpaused() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let b = db.backend().await;
    // A sleeper, a waiter and an unowned running one, all paused.
    let nap = create(&a, "nap").await;
    let due = 1_700_000_000_000 + 60_000;
    let park = Write::Park(sleep_park(due));
    assert_eq!(
        a.commit("nap", nap, park).await.unwrap(),
        Committed::Written
    );
    let wait = create(&a, "waiter").await;
    let park = Write::Park(wait_park("go", 0, None));
    assert_eq!(
        a.commit("waiter", wait, park).await.unwrap(),
        Committed::Written
    );
    let run = create(&a, "run").await;
    a.release("run", run).await.unwrap();
    for id in ["nap", "waiter", "run"] {
        assert!(a.set_paused(id, true, &pause_update(true)).await.unwrap());
        // Paused already: nothing is written.
        assert!(!a.set_paused(id, true, &pause_update(true)).await.unwrap());
    }
    // The listing shows them paused.
    let mut filter = ListFilter::default();
    filter.statuses.push(StatusKind::Paused);
    assert_eq!(a.list(&filter).await.unwrap().instances.len(), 3);
    let mut waiting = ListFilter::default();
    waiting.statuses.push(StatusKind::Waiting);
    assert!(a.list(&waiting).await.unwrap().instances.is_empty());

    // The timer comes due, the awaited event arrives: still nobody claims.
    db.clock.advance(Duration::from_secs(120));
    let seq = b
        .send_event("waiter", "go", event(5), &|_, _, _, _| Ok(()))
        .await
        .unwrap();
    assert_eq!(seq, 0);
    assert!(claim_ids(&b).await.is_empty());
    assert!(b.claim("run").await.unwrap().is_none());

    for id in ["nap", "waiter", "run"] {
        assert!(a.set_paused(id, false, &pause_update(false)).await.unwrap());
    }
    assert_eq!(claim_ids(&b).await, vec!["nap", "run", "waiter"]);
    assert!(a.list(&filter).await.unwrap().instances.is_empty());
    // Unpaused and claimed: the listing shows them running again.
    let mut running = ListFilter::default();
    running.statuses.push(StatusKind::Running);
    assert_eq!(b.list(&running).await.unwrap().instances.len(), 3);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_does_not_move_the_epoch_and_refuses_finished_or_missing_ones() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let mut listening = TestDb::options();
    listening.listen = true;
    let a = db.backend_with(listening.clone()).await;
    let b = db.backend_with(listening).await;
    let mut rx = b.subscribe();
    let lease = create(&a, "owned").await;
    assert!(
        a.set_paused("owned", true, &pause_update(true))
            .await
            .unwrap()
    );
    // The other process hears of it (its owner would stop between steps).
    notice(&mut rx, |n| *n == Notice::Paused { id: "owned".into() }).await;
    let write = Write::Checkpoint {
        record: step("one", 0, 1),
        progress: true,
    };
    assert_eq!(
        a.commit("owned", lease, write).await.unwrap(),
        Committed::Written,
        "the owner finishes the step it runs"
    );
    assert!(
        b.load("owned")
            .await
            .unwrap()
            .unwrap()
            .paused_since()
            .is_some()
    );

    let missing = a.set_paused("nobody", true, &pause_update(true)).await;
    assert!(matches!(
        missing,
        Err(Error::Usage(UsageError::NotFound { .. }))
    ));
    let done = create(&a, "done").await;
    finish(&a, "done", done, InstanceState::Cancelled, 1_500).await;
    let finished = a.set_paused("done", true, &pause_update(true)).await;
    assert!(matches!(
        finished,
        Err(Error::Usage(UsageError::InstanceFinished { .. }))
    ));
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_only_old_finished_instances_with_all_their_rows() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let completed = InstanceState::Completed { output: vec![1] };
    // Old and finished: purged. Recent, or unfinished: kept.
    for (id, at, state) in [
        ("old-done", 1_500, Some(completed.clone())),
        (
            "old-failed",
            1_900,
            Some(InstanceState::Failed { error: "x".into() }),
        ),
        ("new-done", 2_500, Some(completed.clone())),
        ("old-running", 1_000, None),
    ] {
        let lease = create(&a, id).await;
        let write = Write::Checkpoint {
            record: step("one", 0, 1),
            progress: true,
        };
        a.commit(id, lease, write).await.unwrap();
        a.send_event(id, "ping", event(1), &|_, _, _, _| Ok(()))
            .await
            .unwrap();
        if let Some(state) = state {
            finish(&a, id, lease, state, at).await;
        }
    }
    assert_eq!(a.purge(2_000).await.unwrap(), 2);
    let client = db.client().await;
    for (table, column) in [
        ("instances", "id"),
        ("checkpoints", "instance_id"),
        ("events", "instance_id"),
    ] {
        let ids: Vec<String> = client
            .query(
                &format!("SELECT DISTINCT {column} FROM {table} ORDER BY 1"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, vec!["new-done", "old-running"], "{table}");
    }
    assert!(a.load("old-done").await.unwrap().is_none());
    assert_eq!(a.purge(2_000).await.unwrap(), 0);
    assert_eq!(a.purge(3_000).await.unwrap(), 1);
    assert_eq!(
        a.unfinished().await.unwrap(),
        vec!["old-running".to_string()]
    );
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_learns_of_a_pause_and_an_unpause_without_the_hint() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    // No listener: only the owner's own poll can tell it.
    let a = db.backend().await;
    let b = db.backend().await;
    let mut rx = a.subscribe();
    create(&a, "owned").await;
    let paused = |n: &Notice| *n == Notice::Paused { id: "owned".into() };
    assert!(
        b.set_paused("owned", true, &pause_update(true))
            .await
            .unwrap()
    );
    notice(&mut rx, paused).await;
    assert!(
        b.set_paused("owned", false, &pause_update(false))
            .await
            .unwrap()
    );
    notice(&mut rx, paused).await;
    a.close().await;
    b.close().await;
}
