//! Listings: SQL paging newest first, filters, statuses.

use std::collections::HashSet;

use super::*;
use crate::backend::Write;
use crate::listing::{ListFilter, StatusKind};
use crate::time::from_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_instance_once_newest_first() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let backend = db.backend().await;
    // 25 instances; pairs share a creation time, so ids break ties.
    for i in 0..25u64 {
        let workflow = if i % 3 == 0 { "a" } else { "b" };
        let id = format!("n{i:02}");
        let created = backend
            .create(&id, &record(workflow, 10_000 + (i / 2) * 1_000))
            .await
            .unwrap();
        let crate::backend::Created::New(lease) = created else {
            panic!("exists")
        };
        if i % 5 == 0 {
            backend
                .commit(&id, lease, Write::Park(wait_park("go", 0, Some(99_000))))
                .await
                .unwrap();
        }
    }
    backend
        .cancel("n07", &|mut r: InstanceRecord| {
            r.state = InstanceState::Cancelled;
            r
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut filter = ListFilter::new().limit(10);
    let mut pages = 0;
    loop {
        let page = backend.list(&filter).await.unwrap();
        pages += 1;
        seen.extend(page.instances.iter().map(|s| (s.created_at, s.id.clone())));
        match page.next {
            Some(cursor) => filter = ListFilter::new().limit(10).after(cursor),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let ids: HashSet<_> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first, ids breaking ties");

    // Filters, in SQL, with exact pages.
    let a = backend
        .list(&ListFilter::new().workflow("a"))
        .await
        .unwrap();
    assert_eq!(a.instances.len(), 9);
    assert!(a.instances.iter().all(|s| s.workflow == "a"));
    let waiting = backend
        .list(&ListFilter::new().status(StatusKind::Waiting))
        .await
        .unwrap();
    assert_eq!(waiting.instances.len(), 5);
    match &waiting.instances[0].status {
        crate::inspect::Status::Waiting { event, until } => {
            assert_eq!(event, "go");
            assert_eq!(*until, Some(from_ms(99_000)));
        }
        other => panic!("{other:?}"),
    }
    let cancelled = backend
        .list(&ListFilter::new().status(StatusKind::Cancelled))
        .await
        .unwrap();
    assert_eq!(cancelled.instances.len(), 1);
    assert_eq!(cancelled.instances[0].id, "n07");
    let ranged = backend
        .list(
            &ListFilter::new()
                .created_after(from_ms(11_000))
                .created_before(from_ms(13_000))
                .limit(3),
        )
        .await
        .unwrap();
    let ids: Vec<_> = ranged.instances.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["n05", "n04", "n03"]);
    assert!(ranged.next.is_some());
    let rest = backend
        .list(
            &ListFilter::new()
                .created_after(from_ms(11_000))
                .created_before(from_ms(13_000))
                .limit(3)
                .after(ranged.next.unwrap()),
        )
        .await
        .unwrap();
    let ids: Vec<_> = rest.instances.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["n02"]);
    assert!(rest.next.is_none());
    backend.close().await;
}
