//! The PostgreSQL backend's part: its group commits and its claim of a due
//! timer. Needs PostgreSQL (`DURABLE_TEST_PG`, or the local default); without
//! it the part is skipped after saying so, unless `CI` is set.

use std::time::{Duration, SystemTime};

use durable::metrics;
use durable::time::ManualClock;
use durable::{Engine, Status};
use metrics_util::debugging::Snapshotter;

use crate::seen::Seen;

fn url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A sleep on PostgreSQL with a manual clock: parked as a row, claimed two
/// seconds after its due time once the clock passes it.
pub async fn sleep_on_postgres(seen: &mut Seen, snapshotter: &Snapshotter) {
    let client = match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("no PostgreSQL at {}: {e}", url());
            }
            eprintln!("PostgreSQL part skipped: no PostgreSQL ({e})");
            return;
        }
    };
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let schema = format!(
        "durable_metrics_{:016x}",
        crate::support::mix(nanos ^ u64::from(std::process::id()))
    );
    seen.take(snapshotter);
    let lags_before = seen.samples(metrics::CLAIM_LAG).len();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let engine = Engine::builder()
        .postgres(url())
        .schema(&schema)
        .clock(clock.clone())
        .register(crate::sleeper)
        .open()
        .await
        .unwrap();
    let handle = engine
        .start(crate::sleeper, "m-pg-sleeper", 0)
        .await
        .unwrap();
    crate::wait_status(&engine, "m-pg-sleeper", "to park in its sleep", |s| {
        matches!(s, Status::Sleeping { .. })
    })
    .await;
    clock.advance(Duration::from_secs(10 * 3600 + 2));
    let out = crate::support::guarded("m-pg-sleeper's result", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(()));
    engine.shutdown().await;
    seen.take(snapshotter);

    let lags = seen.samples(metrics::CLAIM_LAG);
    assert_eq!(lags[lags_before..], [2.0], "claimed two seconds late");
    let postgres = [("backend", "postgres")];
    let durations = seen.samples_of(metrics::COMMIT_DURATION, &postgres);
    let sizes = seen.samples_of(metrics::COMMIT_GROUP_SIZE, &postgres);
    assert!(!durations.is_empty());
    assert_eq!(durations.len(), sizes.len());
    assert!(sizes.iter().all(|n| *n >= 1.0), "{sizes:?}");
    let sleeper = [("workflow", "sleeper"), ("outcome", "completed")];
    assert_eq!(seen.value(metrics::INSTANCES_FINISHED, &sleeper), 1.0);
    assert_eq!(
        seen.value(metrics::INSTANCES_STARTED, &[("workflow", "sleeper")]),
        2.0,
        "the embedded one and this one"
    );
    // Not recorded on PostgreSQL.
    assert_eq!(seen.value(metrics::PARKED_INSTANCES, &[]), 0.0);

    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop the test schema");
}
