//! `durable queues`, run as a real process: each queue with its pending
//! and running counts and its limits, from an embedded store (limits live
//! in code: shown as unknown) and from PostgreSQL (limits as the workers
//! that dispatch declared them).

#[path = "ops_fixture/run.rs"]
mod run;
mod support;

use std::time::Duration;

use durable::prelude::*;
use durable::{EnqueueOptions, Queue};
use run::*;

#[durable]
async fn mail(_ctx: &Ctx, to: String) -> Result<String, String> {
    step!("send", async { Ok::<_, String>(to.clone()) }.await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_of_an_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .path(dir.path())
        .register(mail)
        .queue(Queue::new("emails").concurrency(2))
        .open()
        .await
        .unwrap();
    for n in 0..3 {
        let later = EnqueueOptions::new().delay(Duration::from_secs(3600));
        let _ = engine
            .enqueue_with("emails", mail, format!("m-{n}"), format!("{n}@x"), later)
            .await
            .unwrap();
    }
    let info = engine.queues().await.unwrap();
    assert_eq!((info[0].pending, info[0].running), (3, 0));
    engine.shutdown().await;

    let table = store(dir.path(), 0, &["queues"]).await;
    let header = table.stdout.lines().next().unwrap();
    for column in ["QUEUE", "PENDING", "RUNNING", "CONCURRENCY", "RATE"] {
        assert!(header.contains(column), "{header}");
    }
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("emails "))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..4], ["emails", "3", "0", "?"], "{row}");
    let json = store(dir.path(), 0, &["queues", "--json"]).await.json();
    assert_eq!(json["queues"][0]["name"], "emails");
    assert_eq!(json["queues"][0]["pending"], 3);
    let listed = store(dir.path(), 0, &["list", "--queue", "emails", "--json"])
        .await
        .json();
    let instances = listed["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3);
    for i in instances {
        assert_eq!(i["queue"], "emails");
        assert_eq!(i["status"]["kind"], "queued");
        assert_eq!(i["status"]["queue"], "emails");
    }
    let none = store(dir.path(), 0, &["list", "--queue", "other", "--json"])
        .await
        .json();
    assert_eq!(none["instances"].as_array().unwrap().len(), 0);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_of_a_postgres_schema_show_the_workers_limits() {
    let Some(schema) = support::pg::Schema::new("durable_cli_queues").await else {
        return;
    };
    let worker = schema
        .builder()
        .register(mail)
        .queue(
            Queue::new("emails")
                .concurrency(2)
                .rate_limit(10, Duration::from_secs(60)),
        )
        .open()
        .await
        .unwrap();
    for n in 0..3 {
        let later = EnqueueOptions::new().delay(Duration::from_secs(3600));
        let _ = worker
            .enqueue_with("emails", mail, format!("m-{n}"), format!("{n}@x"), later)
            .await
            .unwrap();
    }
    let url = support::pg::url();
    let args = ["--postgres", url.as_str(), "--schema", schema.name.as_str()];
    let row = support::wait_until("a dispatch stored the limits", async || {
        let table = expect(&args, 0, &["queues"]).await;
        match table.stdout.lines().find(|l| l.starts_with("emails ")) {
            Some(row) if !row.contains('?') => Ok(row.to_string()),
            _ => Err(table.stdout),
        }
    })
    .await;
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["emails", "3", "0", "2", "-", "-", "10/1m"], "{row}");
    worker.shutdown().await;
    schema.drop_schema().await;
}
