//! Child workflows on PostgreSQL across two worker processes: a parent
//! run by this process starts children whose workflow only another
//! process (a real child process of this test) registers; that process
//! runs them and the parent gets their outputs. A SIGKILL of the other
//! process while a child runs loses nothing: a new worker process
//! finishes it. Cancelling the parent from a pure client cancels a child
//! the other process runs.
//!
//! `cargo test --features postgres --test pg_children`. Needs PostgreSQL
//! (`DURABLE_TEST_PG`); without it the tests pass after saying "skipped: no
//! PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

mod support;

use std::process::Child as Process;

use durable::Status;
use durable::prelude::*;

use support::pg::Schema;

const SCHEMA_ENV: &str = "DURABLE_PG_CHILDREN_SCHEMA";
const DIR_ENV: &str = "DURABLE_PG_CHILDREN_DIR";

fn text(e: Error) -> String {
    e.to_string()
}

/// Registered by the worker process only. With `n == 2` its first run
/// (marked in the ledger) blocks until the process is killed.
#[durable]
async fn times_ten(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!(
        "times-ten",
        async {
            let dir = std::env::var_os(DIR_ENV).expect("the worker has a ledger");
            let first = !support::read_ledger(std::path::Path::new(&dir))
                .iter()
                .any(|l| *l == format!("BODY {n}"));
            support::ledger_in(&dir, &format!("BODY {n}"));
            if n == 2 && first {
                std::future::pending::<()>().await;
            }
            Ok::<_, String>(n * 10)
        }
        .await
    )
}

/// Registered by the worker process only.
#[durable]
async fn waits_for_go(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let go: u64 = wait_for!("go");
    Ok(n + go)
}

/// Registered by this process only.
#[durable]
async fn sum_of_children(ctx: &Ctx, count: u64) -> Result<u64, String> {
    let results = ctx
        .run_children(times_ten, 1..=count, 2)
        .await
        .map_err(text)?;
    let mut sum = 0;
    for r in results {
        sum += r.map_err(text)??;
    }
    Ok(sum)
}

/// Registered by this process only.
#[durable]
async fn waits_on_child(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let child = ctx.start_child(waits_for_go, None, n).await.map_err(text)?;
    child.result().await.map_err(text)?
}

/// The worker process: registers the children's workflows and runs until
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_children_worker() {
    let Some(schema) = std::env::var_os(SCHEMA_ENV) else {
        return;
    };
    let engine = support::pg::builder_on(&schema.to_string_lossy(), true)
        .register(times_ten)
        .register(waits_for_go)
        .open()
        .await
        .unwrap();
    let _keep = engine;
    std::future::pending::<()>().await;
}

fn spawn_worker(schema: &Schema, dir: &std::path::Path) -> Process {
    support::test_process("pg_children_worker")
        .env(SCHEMA_ENV, &schema.name)
        .env(DIR_ENV, dir)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_run_on_another_worker_process_across_its_kill() {
    let Some(schema) = Schema::new("durable_children").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("DURABLE_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .try_init();
    }
    // The schema exists before the worker process opens it.
    let engine = schema
        .builder_with(true)
        .register(sum_of_children)
        .register(waits_on_child)
        .open()
        .await
        .unwrap();
    let mut worker = spawn_worker(&schema, dir.path());
    let handle = engine.start(sum_of_children, "sum", 4).await.unwrap();
    // Child 2 blocks in the worker: kill the worker then, once child 1
    // (run beside it) completed, so that its body must not run again.
    support::wait_until("child 2 runs in the worker process", async || {
        let one_done = matches!(
            engine.status("sum/times_ten-0").await,
            Ok(Status::Completed { .. })
        );
        if one_done
            && support::read_ledger(dir.path())
                .iter()
                .any(|l| l == "BODY 2")
        {
            Ok(())
        } else if let Ok(Some(status)) = worker.try_wait() {
            panic!("the worker ended first: {status}");
        } else {
            Err("not yet")
        }
    })
    .await;
    // What completed before the kill must not run again; a child in its
    // body at the kill (run beside child 2) may, once, after the takeover.
    let mut completed = Vec::new();
    for n in 1..=4u64 {
        let id = format!("sum/times_ten-{}", n - 1);
        if let Ok(Status::Completed { .. }) = engine.status(&id).await {
            completed.push(n);
        }
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(completed.contains(&1), "{completed:?}");
    // A new worker process takes child 2 over once its lease ran out.
    let mut worker = spawn_worker(&schema, dir.path());
    let out = support::guarded("the parent completes", handle.result()).await;
    assert_eq!(out.unwrap(), Ok(10 + 20 + 30 + 40));
    let ledger = support::read_ledger(dir.path());
    for n in [1, 3, 4] {
        let runs = ledger.iter().filter(|l| **l == format!("BODY {n}")).count();
        let most = if completed.contains(&n) { 1 } else { 2 };
        assert!((1..=most).contains(&runs), "child {n}: {ledger:?}");
    }
    let history = engine.history("sum").await.unwrap();
    assert_eq!(
        history.children,
        (0..4)
            .map(|n| format!("sum/times_ten-{n}"))
            .collect::<Vec<_>>()
    );
    let child = engine.history("sum/times_ten-1").await.unwrap();
    assert_eq!(child.parent.as_deref(), Some("sum"));

    // A cancel of the parent from a pure client cancels the child the
    // worker process runs.
    let parent = engine.start(waits_on_child, "waiting", 1).await.unwrap();
    let client = schema.builder().open().await.unwrap();
    support::wait_until("the child waits in the worker", async || {
        match client.status("waiting/waits_for_go-0").await {
            Ok(Status::Waiting { .. }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    client.cancel("waiting").await.unwrap();
    assert!(matches!(
        support::guarded("the parent ends", parent.result()).await,
        Err(Error::Instance(InstanceError::Cancelled { .. }))
    ));
    assert!(matches!(
        client.status("waiting/waits_for_go-0").await.unwrap(),
        Status::Cancelled
    ));

    worker.kill().unwrap();
    worker.wait().unwrap();
    client.shutdown().await;
    engine.shutdown().await;
    schema.drop_schema().await;
}
