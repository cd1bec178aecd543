//! The `durable` command line on PostgreSQL (`--postgres URL --schema S`),
//! run as a real process: it lists and shows what a worker left in the
//! schema, claims and runs nothing (the engine it opens registers no
//! workflow), and retries, forks, pauses, unpauses, cancels and purges.
//!
//! `cargo test --features postgres --test cli_pg`. Needs PostgreSQL
//! (`DURABLE_TEST_PG`); without it the test passes after saying "skipped:
//! no PostgreSQL", unless `CI` is set.
#![cfg(feature = "postgres")]

#[path = "ops_fixture/mod.rs"]
mod fixture;
#[path = "ops_fixture/run.rs"]
mod run;

use durable::prelude::*;
use durable::{ListFilter, StatusKind};
use fixture::*;
use run::*;
use serde_json::Value;

fn url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn input(sku: &str) -> Order {
    Order {
        sku: sku.into(),
        cents: 1250,
    }
}

/// Everything the schema says about every instance.
async fn snapshot(engine: &Engine) -> Vec<Value> {
    let page = engine
        .list_json(&ListFilter::new().limit(1000))
        .await
        .unwrap();
    let mut out = vec![page.clone()];
    for i in page["instances"].as_array().unwrap() {
        let id = i["id"].as_str().unwrap();
        out.push(engine.history_json(id).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_on_postgresql() {
    let client = match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("no PostgreSQL at {}: {e}", url());
            }
            eprintln!("skipped: no PostgreSQL ({e})");
            return;
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let schema = format!("durable_cli_{nanos:x}_{}", std::process::id());
    let pg = ["--postgres", &url(), "--schema", &schema].map(str::to_string);
    let pg: Vec<&str> = pg.iter().map(String::as_str).collect();
    let builder = || Engine::builder().postgres(url()).schema(&schema);

    // A worker leaves a completed, a waiting and an interrupted instance.
    BROKEN.store(false, std::sync::atomic::Ordering::SeqCst);
    let worker = builder().register(order).open().await.unwrap();
    let done = worker.run(order, COMPLETED, input("ok")).await.unwrap();
    assert_eq!(done, Ok("charged 1350 approved by auto".to_string()));
    let _ = worker.start(order, WAITING, input("wait")).await.unwrap();
    until_status(&worker, WAITING, StatusKind::Waiting).await;
    let _ = worker.start(order, RUNNING, input("hang")).await.unwrap();
    until_in_step(&worker, RUNNING).await;
    let failed = worker.run(order, FAILED, input("panic")).await;
    assert!(failed.is_err(), "{failed:?}");
    worker.shutdown().await;
    let reader = builder().open().await.unwrap();
    let before = snapshot(&reader).await;

    // Reading: the same documents as through --store or --url.
    let list = expect(&pg, 0, &["list", "--json"]).await.json();
    let instances = list["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 4, "{list}");
    for (id, kind) in [
        (COMPLETED, "completed"),
        (FAILED, "failed"),
        (WAITING, "waiting"),
        (RUNNING, "running"),
    ] {
        let i = instances.iter().find(|i| i["id"] == id).unwrap();
        assert_eq!(i["status"]["kind"], kind, "{i}");
    }
    let table = expect(&pg, 0, &["list"]).await.stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(WAITING) && l.contains("waiting")),
        "{table}"
    );
    let show = expect(&pg, 0, &["show", WAITING]).await.stdout;
    assert!(show.contains("Awaits event   \"approval\""), "{show}");
    let history = expect(&pg, 0, &["history", COMPLETED, "--json"])
        .await
        .json();
    assert_eq!(history["steps"][1]["name"], "charge");
    let stats = expect(&pg, 0, &["stats", "--json"]).await.json();
    assert_eq!(stats["total"], 4);
    let missing = expect(&pg, 1, &["show", "nope"]).await;
    assert!(
        missing.stderr.contains("no instance \"nope\""),
        "{}",
        missing.stderr
    );

    // Nothing was claimed or run: the interrupted instance is as it was.
    assert_eq!(snapshot(&reader).await, before);
    let interrupted = reader.history_json(RUNNING).await.unwrap();

    // Retry: running again in the store (no engine here runs it).
    let retried = expect(&pg, 0, &["retry", FAILED]).await;
    assert_eq!(retried.stdout.trim(), format!("retried {FAILED}"));
    let doc = expect(&pg, 0, &["show", FAILED, "--json"]).await.json();
    assert_eq!(doc["status"]["kind"], "running", "{doc}");
    let refused = expect(&pg, 1, &["retry", COMPLETED]).await;
    assert!(
        refused
            .stderr
            .contains("only a failed, blocked or needs-attention instance"),
        "{}",
        refused.stderr
    );

    // Pause and unpause.
    let paused = expect(&pg, 0, &["pause", WAITING]).await;
    assert!(
        paused.stdout.contains(&format!("paused {WAITING}")),
        "{}",
        paused.stdout
    );
    let doc = expect(&pg, 0, &["show", WAITING, "--json"]).await.json();
    assert_eq!(doc["status"]["kind"], "paused", "{doc}");
    let listed = expect(&pg, 0, &["list", "--status", "paused", "--json"])
        .await
        .json();
    let ids: Vec<&str> = listed["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [WAITING], "{listed}");
    let unpaused = expect(&pg, 0, &["unpause", WAITING, "--json"]).await.json();
    assert_eq!(unpaused["results"][0]["ok"], true, "{unpaused}");
    let doc = expect(&pg, 0, &["show", WAITING, "--json"]).await.json();
    assert_eq!(doc["status"]["kind"], "waiting", "{doc}");

    // Fork: a new instance with the checkpoints before the step.
    let forked = expect(
        &pg,
        0,
        &[
            "fork",
            COMPLETED,
            "--from-step",
            "charge",
            "--new-id",
            "copy",
        ],
    )
    .await;
    assert_eq!(forked.stdout, "copy\n");
    let doc = expect(&pg, 0, &["history", "copy", "--json"]).await.json();
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["price"], "{doc}");

    // The interrupted instance was left alone throughout.
    assert_eq!(reader.history_json(RUNNING).await.unwrap(), interrupted);

    // Cancel: refused for a finished instance, done for the waiting one.
    let finished = expect(&pg, 1, &["cancel", COMPLETED]).await;
    assert!(
        finished.stderr.contains("already finished"),
        "{}",
        finished.stderr
    );
    let cancelled = expect(&pg, 0, &["cancel", WAITING]).await;
    assert_eq!(cancelled.stdout.trim(), format!("cancelled {WAITING}"));
    let shown = expect(&pg, 0, &["show", WAITING, "--json"]).await.json();
    assert_eq!(shown["status"]["kind"], "cancelled");
    assert_eq!(
        reader.status(WAITING).await.unwrap().kind(),
        StatusKind::Cancelled
    );

    // Purge: the finished ones (completed, cancelled) go.
    let purged = expect(&pg, 0, &["purge", "--older-than", "0s", "--yes", "--json"])
        .await
        .json();
    assert_eq!(purged["purged"], 2, "{purged}");
    expect(&pg, 1, &["show", COMPLETED]).await;
    let left = expect(&pg, 0, &["list", "--json"]).await.json();
    assert_eq!(left["instances"].as_array().unwrap().len(), 3, "{left}");

    // Another schema is another store; a server that is not there is an error.
    let empty = expect(
        &["--postgres", &url(), "--schema", &format!("{schema}_other")],
        0,
        &["list", "--json"],
    )
    .await
    .json();
    assert!(empty["instances"].as_array().unwrap().is_empty());
    let down = expect(
        &["--postgres", "postgres://postgres@127.0.0.1:1/postgres"],
        1,
        &["list"],
    )
    .await;
    assert!(down.stderr.contains("--postgres: "), "{}", down.stderr);
    expect(&["--postgres", &url(), "--store", "x"], 2, &["list"]).await;

    reader.shutdown().await;
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP SCHEMA IF EXISTS {schema}_other CASCADE"
        ))
        .await
        .expect("drop the test schemas");
}
