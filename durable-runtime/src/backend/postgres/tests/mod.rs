//! Tests against a real PostgreSQL server: `DURABLE_TEST_PG`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`. Each test works in a
//! schema of its own, dropped at its end, so tests run in parallel. With
//! no server, a test fails when `CI` is set and is skipped otherwise.

mod claims;
mod events;
mod faults;
mod fencing;
mod listing;
mod operator;
mod plans;
mod schema;
mod speed;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio_postgres::NoTls;

use super::{PgBackend, PgOptions};
use crate::backend::{Backend, Created, Lease, Notice};
use crate::records::{
    CheckpointRecord, CheckpointState, EventRecord, InstanceRecord, InstanceState, ParkRecord,
    WaitCond,
};
use crate::time::{Clock, ManualClock};

/// A hang guard: generous, only there so that a broken test fails rather
/// than hangs.
const GUARD: Duration = Duration::from_secs(120);

fn url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A schema of one test, dropped when it goes out of scope.
pub(super) struct TestDb {
    pub(super) schema: String,
    pub(super) clock: ManualClock,
}

impl TestDb {
    /// A fresh schema name, or `None` (after saying so) when there is no
    /// server and `CI` is not set.
    pub(super) async fn new() -> Option<TestDb> {
        if let Err(e) = tokio_postgres::connect(&url(), NoTls).await {
            if std::env::var_os("CI").is_some() {
                panic!("no PostgreSQL at {}: {e}", url());
            }
            eprintln!("skipped: no PostgreSQL ({e})");
            return None;
        }
        Some(TestDb {
            schema: format!("durable_t_{:016x}", super::notify::random_u64()),
            clock: ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        })
    }

    /// Quiet options: no listener, short poll, small pool.
    pub(super) fn options() -> PgOptions {
        PgOptions {
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(50),
            poll_listening: Duration::from_millis(50),
            pool_size: 4,
            listen: false,
            worker_retention: super::WORKER_RETENTION,
        }
    }

    pub(super) async fn backend(&self) -> PgBackend {
        self.backend_with(TestDb::options()).await
    }

    pub(super) async fn backend_with(&self, options: PgOptions) -> PgBackend {
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        PgBackend::connect(&url(), &self.schema, options, clock)
            .await
            .expect("connect")
    }

    /// A plain client for looking at (or tampering with) the tables.
    pub(super) async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&url(), NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .await
            .expect("search_path");
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&url(), NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub(super) fn record(workflow: &str, created_at_ms: u64) -> InstanceRecord {
    InstanceRecord {
        workflow: workflow.into(),
        version: 1,
        manifest: 0,
        input: vec![1, 2, 3],
        state: InstanceState::Running,
        created_at_ms,
        transitions: Vec::new(),
    }
}

/// A finished step `name` (occurrence `occurrence`); `attempts` tells
/// writers apart.
pub(super) fn step(name: &str, occurrence: u32, attempts: u32) -> CheckpointRecord {
    CheckpointRecord {
        name: name.into(),
        occurrence,
        key: None,
        declared: true,
        seq: occurrence as u64,
        attempts,
        started_at_ms: 1,
        state: CheckpointState::Done {
            finished_at_ms: 2,
            ok: true,
            type_name: "u32".into(),
            fingerprint: 7,
            outcome: vec![9],
            error_text: None,
        },
    }
}

/// A park on event `name` number `occurrence` of type "T", with an
/// optional timeout.
pub(super) fn wait_park(name: &str, occurrence: u32, deadline_ms: Option<u64>) -> ParkRecord {
    ParkRecord {
        parked_at_ms: 1,
        conds: vec![WaitCond {
            name: name.into(),
            occurrence,
            deadline_ms,
            event_type: Some("T".into()),
        }],
    }
}

pub(super) fn sleep_park(deadline_ms: u64) -> ParkRecord {
    ParkRecord {
        parked_at_ms: 1,
        conds: vec![WaitCond {
            name: "nap".into(),
            occurrence: 0,
            deadline_ms: Some(deadline_ms),
            event_type: None,
        }],
    }
}

pub(super) fn event(sent_at_ms: u64) -> EventRecord {
    EventRecord {
        type_name: "T".into(),
        fingerprint: 1,
        shape: "T".into(),
        payload: vec![4],
        sent_at_ms,
    }
}

/// Creates `id` on `backend`; it must be new. Returns its lease.
pub(super) async fn create(backend: &PgBackend, id: &str) -> Lease {
    match backend
        .create(id, &record("wf", 1_000))
        .await
        .expect("create")
    {
        Created::New(lease) => lease,
        other => panic!("{id}: {other:?}"),
    }
}

/// Waits (bounded by the hang guard) for a notice that `pred` accepts.
pub(super) async fn notice(
    rx: &mut tokio::sync::broadcast::Receiver<Notice>,
    pred: impl Fn(&Notice) -> bool,
) -> Notice {
    tokio::time::timeout(GUARD, async {
        loop {
            match rx.recv().await {
                Ok(n) if pred(&n) => return n,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("notices closed: {e}"),
            }
        }
    })
    .await
    .expect("hang guard: no such notice")
}

/// Polls `cond` until it holds (bounded by the hang guard).
pub(super) async fn until<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) {
    tokio::time::timeout(GUARD, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("hang guard: condition never held");
}
