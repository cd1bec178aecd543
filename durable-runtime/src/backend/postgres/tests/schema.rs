//! Schema creation and versions; worker registration and close.

use super::*;
use crate::error::{Error, StoreError, UsageError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_workers_starting_together_migrate_once() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let connects = (0..8).map(|_| {
        let clock: Arc<dyn Clock> = Arc::new(db.clock.clone());
        let schema = db.schema.clone();
        tokio::spawn(async move {
            let mut options = TestDb::options();
            options.pool_size = 2;
            PgBackend::connect(&url(), &schema, options, clock).await
        })
    });
    let mut backends = Vec::new();
    for connect in connects {
        backends.push(connect.await.expect("task").expect("connect"));
    }
    let client = db.client().await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        super::super::schema::MIGRATIONS
            .iter()
            .map(|(v, _)| *v)
            .collect::<Vec<_>>()
    );
    let workers: i64 = client
        .query_one(
            "SELECT count(DISTINCT id) FROM workers WHERE state = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(workers, 8);
    for backend in &backends {
        backend.close().await;
    }
    let gone: i64 = client
        .query_one("SELECT count(*) FROM workers WHERE state = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 8, "close marks each worker gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_code_is_refused() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let first = db.backend().await;
    first.close().await;
    let newer = super::super::schema::latest() + 1;
    db.client()
        .await
        .execute("INSERT INTO migrations (version) VALUES ($1)", &[&newer])
        .await
        .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(db.clock.clone());
    let refused = PgBackend::connect(&url(), &db.schema, TestDb::options(), clock).await;
    match refused {
        Err(Error::Store(StoreError::FormatTooNew { found, supported })) => {
            assert_eq!(found, newer as u32);
            assert_eq!(supported, newer as u32 - 1);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schema_name_is_refused_before_any_sql() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let clock: Arc<dyn Clock> = Arc::new(db.clock.clone());
    let refused =
        PgBackend::connect(&url(), "x\"; DROP TABLE y; --", TestDb::options(), clock).await;
    assert!(matches!(
        refused,
        Err(Error::Usage(UsageError::InvalidSchema { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_releases_what_the_worker_holds() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let a = db.backend().await;
    let b = db.backend().await;
    create(&a, "held").await;
    assert!(
        b.claim_due(&[("wf", 1)], 10)
            .await
            .unwrap()
            .claims
            .is_empty()
    );
    a.close().await;
    let claims = b.claim_due(&[("wf", 1)], 10).await.unwrap().claims;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].kind, crate::backend::ClaimKind::Recover);
    assert!(claims[0].lease.epoch > 1);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_not_recorded_is_applied_even_below_the_newest() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let first = db.backend().await;
    let pool = first.inner().pool.clone();
    let quoted = first.inner().quoted.clone();
    // A build that knows a version between two the schema has (as after a
    // merge that adds one below the newest) applies it, and only it.
    let mut migrations = super::super::schema::MIGRATIONS.to_vec();
    migrations.push((2000, "CREATE TABLE above_ones (x integer)"));
    super::super::schema::migrate_with(&pool, &db.schema, &quoted, &migrations)
        .await
        .unwrap();
    let at = migrations.len() - 1;
    migrations.insert(at, (1000, "CREATE TABLE between_ones (x integer)"));
    super::super::schema::migrate_with(&pool, &db.schema, &quoted, &migrations)
        .await
        .unwrap();
    first.close().await;
    let client = db.client().await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut want: Vec<i32> = migrations.iter().map(|(v, _)| *v).collect();
    want.sort();
    assert_eq!(versions, want);
    client
        .execute("SELECT x FROM between_ones", &[])
        .await
        .unwrap();
}
