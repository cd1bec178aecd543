//! Queues on PostgreSQL: guards that a queue's global concurrency limit
//! holds across worker engines and a second worker process (every body
//! appends `+id`/`-id` to one ledger file, whose order is the global
//! order), that priority, partition limits and deduplication are decided
//! in the database, and that a SIGKILL of the worker running a queue's
//! instances loses none and breaks no limit after another worker takes
//! over.
//!
//! `cargo test --features postgres --test pg_queues`. Needs PostgreSQL
//! (`DURABLE_TEST_PG`); without it the tests pass after saying "skipped: no
//! PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use durable::prelude::*;
use durable::{EnqueueOptions, Queue};

use support::pg::{Schema, builder_on};

const SCHEMA_ENV: &str = "DURABLE_PG_QUEUES_SCHEMA";
const DIR_ENV: &str = "DURABLE_PG_QUEUES_DIR";
/// Set in a child whose bodies never return (it is killed mid-run).
const HANG_ENV: &str = "DURABLE_PG_QUEUES_HANG";
const LIMIT: u32 = 3;

/// `(ledger dir, partition tag)`: appends `+id` and `-id` around a pause.
#[durable(name = "pg_queued")]
async fn queued(ctx: &Ctx, arg: (String, String)) -> Result<(), String> {
    let id = ctx.id().to_string();
    let (dir, _tag) = arg;
    step!(
        "work",
        async {
            support::ledger_in(&dir, &format!("+{id}"));
            if std::env::var_os(HANG_ENV).is_some() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            support::ledger_in(&dir, &format!("-{id}"));
            Ok::<_, String>(())
        }
        .await
    )?;
    step!(
        "after",
        async {
            support::ledger_in(&dir, &format!("after {id}"));
            Ok::<_, String>(())
        }
        .await
    )
}

fn limited() -> Queue {
    Queue::new("limited").concurrency(LIMIT)
}

/// The most ids in flight at once in the ledger, per group of `group(id)`.
fn max_in_flight(dir: &Path, group: impl Fn(&str) -> String) -> usize {
    let mut now: std::collections::HashMap<String, usize> = Default::default();
    let mut max = 0;
    for line in support::read_ledger(dir) {
        if let Some(id) = line.strip_prefix('+') {
            let n = now.entry(group(id)).or_default();
            *n += 1;
            max = max.max(*n);
        } else if let Some(id) = line.strip_prefix('-') {
            *now.entry(group(id)).or_default() -= 1;
        }
    }
    max
}

/// A worker process on the schema: runs the limited queue until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_queues_worker_child() {
    let (Some(schema), Some(dir)) = (std::env::var_os(SCHEMA_ENV), std::env::var_os(DIR_ENV))
    else {
        return;
    };
    let engine = builder_on(&schema.to_string_lossy(), true)
        .register(queued)
        .queue(limited())
        .open()
        .await
        .unwrap();
    std::fs::write(PathBuf::from(dir).join("child-up"), b"").unwrap();
    std::future::pending::<()>().await;
    drop(engine);
}

fn spawn_child(schema: &str, dir: &Path, hang: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "pg_queues_worker_child", "--nocapture"])
        .env(SCHEMA_ENV, schema)
        .env(DIR_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if hang {
        cmd.env(HANG_ENV, "1");
    }
    cmd.spawn().unwrap()
}

async fn child_up(dir: &Path, child: &mut Child) {
    support::wait_until("the worker process is up", async || {
        if dir.join("child-up").exists() {
            Ok(())
        } else if let Ok(Some(status)) = child.try_wait() {
            panic!("the worker process ended first: {status}");
        } else {
            Err("not yet")
        }
    })
    .await;
}

/// Two engines here and a worker process, one queue with a global limit:
/// never more of its instances in flight than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_holds_across_engines_and_processes() {
    let Some(schema) = Schema::new("durable_queues").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let open = async || {
        schema
            .builder_with(true)
            .register(queued)
            .queue(limited())
            .open()
            .await
            .unwrap()
    };
    let a = open().await;
    let b = open().await;
    let mut child = spawn_child(&schema.name, dir.path(), false);
    child_up(dir.path(), &mut child).await;
    let arg = dir.path().to_string_lossy().into_owned();
    let items = (0..30).map(|n| (format!("g-{n}"), (arg.clone(), String::new())));
    let handles = b.enqueue_many("limited", queued, items).await.unwrap();
    for h in handles {
        support::guarded("a queued instance completes", h.result())
            .await
            .unwrap()
            .unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let max = max_in_flight(dir.path(), |_| String::new());
    assert!((1..=LIMIT as usize).contains(&max), "{max} in flight");
    let ledger = support::read_ledger(dir.path());
    for n in 0..30 {
        let after = ledger
            .iter()
            .filter(|l| **l == format!("after g-{n}"))
            .count();
        assert_eq!(after, 1, "g-{n}");
    }
    let info = a.queues().await.unwrap();
    assert_eq!((info[0].pending, info[0].running), (0, 0));
    a.shutdown().await;
    b.shutdown().await;
    schema.drop_schema().await;
}

/// Priority with a limit of one, the partition limit and deduplication, in
/// the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_partitions_and_dedup_are_decided_in_the_database() {
    let Some(schema) = Schema::new("durable_queues").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let arg = dir.path().to_string_lossy().into_owned();
    // A pure client enqueues while no worker runs: the order is then
    // decided by priority alone once the worker opens.
    let client = schema
        .builder()
        .queue(Queue::new("one").concurrency(1))
        .queue(Queue::new("tenants").partition_concurrency(1))
        .open()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for (id, priority) in [("p5", 5), ("p1a", 1), ("p3", 3), ("p1b", 1), ("p-2", -2)] {
        let options = EnqueueOptions::new().priority(priority).dedup(id);
        handles.push(
            client
                .enqueue_with("one", queued, id, (arg.clone(), String::new()), options)
                .await
                .unwrap(),
        );
    }
    let err = client
        .enqueue_with(
            "one",
            queued,
            "p5-again",
            (arg.clone(), String::new()),
            EnqueueOptions::new().dedup("p5"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Usage(UsageError::Duplicate { existing, .. }) if existing == "p5"),
        "{err:?}"
    );
    for n in 0..9 {
        let options = EnqueueOptions::new().partition(format!("t{}", n % 3));
        handles.push(
            client
                .enqueue_with(
                    "tenants",
                    queued,
                    format!("t{}-{n}", n % 3),
                    (arg.clone(), String::new()),
                    options,
                )
                .await
                .unwrap(),
        );
    }
    let worker = schema
        .builder()
        .register(queued)
        .queue(Queue::new("one").concurrency(1))
        .queue(Queue::new("tenants").partition_concurrency(1))
        .open()
        .await
        .unwrap();
    for h in handles {
        support::guarded("a queued instance completes", h.result())
            .await
            .unwrap()
            .unwrap();
    }
    let order: Vec<String> = support::read_ledger(dir.path())
        .into_iter()
        .filter_map(|l| l.strip_prefix('+').map(str::to_string))
        .filter(|id| id.starts_with('p'))
        .collect();
    assert_eq!(order, ["p-2", "p1a", "p1b", "p3", "p5"]);
    let max = max_in_flight(dir.path(), |id| {
        if id.starts_with('p') {
            "p".to_string()
        } else {
            id.split('-').next().unwrap_or("").to_string()
        }
    });
    assert_eq!(max, 1, "per partition (and for the limit of one)");
    // Finished: the dedup id is free again.
    let again = client
        .enqueue_with(
            "one",
            queued,
            "p5-again",
            (arg.clone(), String::new()),
            EnqueueOptions::new().dedup("p5"),
        )
        .await
        .unwrap();
    support::guarded("p5-again completes", again.result())
        .await
        .unwrap()
        .unwrap();
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}

/// A worker process killed while it runs the queue's instances: another
/// worker takes them over once its lease runs out; every instance finishes
/// once past its checkpoints and the limit holds throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing_and_the_limit_holds() {
    let Some(schema) = Schema::new("durable_queues").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(&schema.name, dir.path(), true);
    child_up(dir.path(), &mut child).await;
    let client = schema.builder().queue(limited()).open().await.unwrap();
    let arg = dir.path().to_string_lossy().into_owned();
    let items = (0..12).map(|n| (format!("k-{n}"), (arg.clone(), String::new())));
    let handles = client.enqueue_many("limited", queued, items).await.unwrap();
    support::wait_until("the worker process runs the limit's worth", async || {
        let starts = support::read_ledger(dir.path()).len();
        if starts >= LIMIT as usize {
            Ok(())
        } else {
            Err(starts)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(support::read_ledger(dir.path()).len(), LIMIT as usize);
    let worker = schema
        .builder()
        .register(queued)
        .queue(limited())
        .open()
        .await
        .unwrap();
    for h in handles {
        support::guarded("a queued instance completes", h.result())
            .await
            .unwrap()
            .unwrap();
    }
    // The killed bodies never wrote `-`: count only this worker's runs.
    let ledger = support::read_ledger(dir.path());
    let mut now = 0usize;
    let mut max = 0usize;
    for line in ledger.iter().skip(LIMIT as usize) {
        if line.starts_with('+') {
            now += 1;
            max = max.max(now);
        } else if line.starts_with('-') {
            now -= 1;
        }
    }
    assert!((1..=LIMIT as usize).contains(&max), "{max} in flight");
    for n in 0..12 {
        let after = ledger
            .iter()
            .filter(|l| **l == format!("after k-{n}"))
            .count();
        assert_eq!(after, 1, "k-{n}");
    }
    client.shutdown().await;
    worker.shutdown().await;
    schema.drop_schema().await;
}
