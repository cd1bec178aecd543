//! The `durable` command line, run as a real process against stores with
//! instances in every status: output, `--json`, exit codes (0 ok, 1 error,
//! 2 usage), that opening a store directly runs and changes nothing but
//! what a command asks for, that an event sent as JSON is the one the
//! typed wait reads, the operator actions (retry, pause, unpause, fork,
//! purge) and what the service does with them, and the same commands
//! through the admin endpoint.

#[path = "ops_fixture/mod.rs"]
mod fixture;
#[path = "ops_fixture/run.rs"]
mod run;

use std::path::Path;
use std::sync::atomic::Ordering;

use durable::prelude::*;
use durable::{ListFilter, StatusKind};
use fixture::*;
use run::*;
use serde_json::{Value, json};

/// Everything the store says about every instance, read by an engine that
/// registers no workflow.
async fn snapshot(dir: &Path) -> Vec<Value> {
    let engine = Engine::builder().path(dir).open().await.unwrap();
    let snapshot = snapshot_of(&engine).await;
    engine.shutdown().await;
    snapshot
}

async fn snapshot_of(engine: &Engine) -> Vec<Value> {
    let page = engine
        .list_json(&ListFilter::new().limit(1000))
        .await
        .unwrap();
    let mut out = vec![page.clone()];
    for i in page["instances"].as_array().unwrap() {
        out.push(
            engine
                .history_json(i["id"].as_str().unwrap())
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_store_shows_every_status_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    build(dir.path()).await.shutdown().await;
    let before = snapshot(dir.path()).await;

    let list = store(dir.path(), 0, &["list"]).await;
    let header = list.stdout.lines().next().unwrap();
    for column in ["ID", "WORKFLOW", "STATUS", "DETAIL", "AGE", "UPDATED"] {
        assert!(header.contains(column), "{header}");
    }
    for (id, kind) in ALL {
        let line = list
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("{id} missing:\n{}", list.stdout));
        assert!(line.contains(kind), "{line}");
    }
    assert!(
        list.stdout.contains("event \"approval\""),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains('\x1b'), "NO_COLOR: no colour");

    let listed = store(dir.path(), 0, &["list", "--json"]).await.json();
    let instances = listed["instances"].as_array().unwrap();
    assert_eq!(instances.len(), ALL.len());
    for (id, kind) in ALL {
        let i = instances.iter().find(|i| i["id"] == id).unwrap();
        assert_eq!(i["status"]["kind"], kind, "{i}");
        assert_eq!(i["workflow"], "order");
    }
    let waiting = instances.iter().find(|i| i["id"] == WAITING).unwrap();
    assert_eq!(waiting["status"]["event"], "approval");

    let some = store(
        dir.path(),
        0,
        &["list", "--status", "blocked,needs-attention", "--json"],
    )
    .await
    .json();
    let mut ids: Vec<&str> = some["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [BLOCKED, NEEDS_ATTENTION]);
    let sleeping = store(dir.path(), 0, &["list", "--status", "sleeping", "--json"])
        .await
        .json();
    assert_eq!(sleeping["instances"][0]["id"], SLEEPING);
    assert_eq!(sleeping["instances"].as_array().unwrap().len(), 1);
    let none = store(dir.path(), 0, &["list", "--workflow", "nope"]).await;
    assert_eq!(none.stdout.trim(), "no instances");
    let future = store(dir.path(), 0, &["list", "--since", "2999-01-01", "--json"])
        .await
        .json();
    assert!(future["instances"].as_array().unwrap().is_empty());
    let recent = store(dir.path(), 0, &["list", "--since", "1h", "--json"])
        .await
        .json();
    assert_eq!(recent["instances"].as_array().unwrap().len(), ALL.len());

    // Pages: three, then the rest after the cursor.
    let first = store(dir.path(), 0, &["list", "--limit", "3", "--json"])
        .await
        .json();
    assert_eq!(first["instances"].as_array().unwrap().len(), 3);
    let cursor = first["next"].as_str().expect("a cursor").to_string();
    let rest = store(
        dir.path(),
        0,
        &[
            "list", "--limit", "3", "--after", &cursor, "--all", "--json",
        ],
    )
    .await
    .json();
    let mut seen: Vec<String> = first["instances"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["instances"].as_array().unwrap())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), ALL.len());
    assert!(rest["next"].is_null());

    let show = store(dir.path(), 0, &["show", WAITING]).await.stdout;
    assert!(show.contains("waiting"), "{show}");
    assert!(show.contains("Awaits event   \"approval\""), "{show}");
    assert!(show.contains(r#"{"sku":"wait","cents":1250}"#), "{show}");
    let show = store(dir.path(), 0, &["show", SLEEPING]).await.stdout;
    assert!(
        show.contains("cool-off (sleep, sleeping), wakes at"),
        "{show}"
    );
    let show = store(dir.path(), 0, &["show", BLOCKED]).await.stdout;
    assert!(
        show.contains("blocked") && show.contains("out of paper"),
        "{show}"
    );
    let show = store(dir.path(), 0, &["show", FAILED]).await.stdout;
    assert!(
        show.contains("failed") && show.contains("warehouse is on fire"),
        "{show}"
    );
    let show = store(dir.path(), 0, &["show", NEEDS_ATTENTION])
        .await
        .stdout;
    assert!(show.contains("needs-attention"), "{show}");
    let show = store(dir.path(), 0, &["show", COMPLETED_ERR]).await.stdout;
    assert!(show.contains(r#"{"Err":"refused at 1350"}"#), "{show}");

    let history = store(dir.path(), 0, &["history", COMPLETED]).await.stdout;
    let price = history.lines().find(|l| l.starts_with("price ")).unwrap();
    assert!(
        price.contains("step") && price.contains(" ok ") && price.ends_with("1350"),
        "{price}"
    );
    let charge = history.lines().find(|l| l.starts_with("charge ")).unwrap();
    assert!(
        charge.contains(" ok ") && charge.contains("1350"),
        "{charge}"
    );
    assert!(
        history.contains("started") && history.contains("completed"),
        "{history}"
    );
    assert!(
        history.contains(r#"{"Ok":"charged 1350 approved by auto"}"#),
        "{history}"
    );

    let doc = store(dir.path(), 0, &["history", COMPLETED, "--json"])
        .await
        .json();
    assert_eq!(doc["input"], json!({"sku": "ok", "cents": 1250}));
    assert_eq!(doc["steps"][0]["name"], "price");
    assert_eq!(doc["steps"][0]["value"], 1350);
    assert_eq!(doc["steps"][1]["name"], "charge");
    assert_eq!(doc["steps"][1]["value"], 1350);
    assert_eq!(
        doc["output"],
        json!({"Ok": "charged 1350 approved by auto"})
    );
    let failed = store(dir.path(), 0, &["history", FAILED, "--json"])
        .await
        .json();
    let explode = &failed["steps"][1];
    assert_eq!(explode["name"], "explode");
    assert_eq!(explode["outcome"], "panicked");
    assert_eq!(explode["attempts"], 1);
    let sleeping = store(dir.path(), 0, &["history", SLEEPING, "--json"])
        .await
        .json();
    assert_eq!(sleeping["current"]["name"], "cool-off");
    assert_eq!(sleeping["current"]["kind"], "sleep");
    assert_eq!(sleeping["current"]["duration_ms"], 86_400_000);

    let stats = store(dir.path(), 0, &["stats", "--json"]).await.json();
    assert_eq!(stats["total"], ALL.len());
    assert_eq!(stats["by_status"]["completed"], 2);
    for kind in [
        "failed",
        "blocked",
        "needs-attention",
        "cancelled",
        "sleeping",
        "waiting",
        "running",
    ] {
        assert_eq!(stats["by_status"][kind], 1, "{kind}: {stats}");
    }
    assert_eq!(stats["by_workflow"]["order"]["total"], ALL.len());
    let table = store(dir.path(), 0, &["stats"]).await.stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("completed") && l.ends_with('2')),
        "{table}"
    );

    let missing = store(dir.path(), 1, &["show", "nope"]).await;
    assert!(
        missing.stderr.contains("no instance \"nope\""),
        "{}",
        missing.stderr
    );

    // Nothing ran, nothing changed: the interrupted instance was not
    // resumed (no new transition, same recoveries), every document is equal.
    let after = snapshot(dir.path()).await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_a_store_and_their_errors() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    build(dir.path()).await.shutdown().await;
    let d = dir.path();

    // An event is checked against the wait's payload type.
    let wrong = store(
        d,
        1,
        &[
            "send-event",
            WAITING,
            "approval",
            r#"{"approved": "yes", "by": "ana"}"#,
        ],
    )
    .await;
    assert!(
        wrong.stderr.contains("at .approved: expected a bool"),
        "{}",
        wrong.stderr
    );
    let unknown = store(d, 1, &["send-event", WAITING, "nosuch", "{}"]).await;
    assert!(
        unknown.stderr.contains("no `wait_for!(\"nosuch\")`"),
        "{}",
        unknown.stderr
    );
    let not_json = store(d, 2, &["send-event", WAITING, "approval", "{approved"]).await;
    assert!(not_json.stderr.contains("not JSON"), "{}", not_json.stderr);
    let doc = store(d, 0, &["history", WAITING, "--json"]).await.json();
    assert!(
        doc["events"].as_array().unwrap().is_empty(),
        "refused events are not stored"
    );
    store(
        d,
        0,
        &[
            "send-event",
            WAITING,
            "approval",
            r#"{"approved": true, "by": "ana"}"#,
        ],
    )
    .await;
    let doc = store(d, 0, &["history", WAITING, "--json"]).await.json();
    assert_eq!(doc["events"][0]["name"], "approval");
    assert_eq!(
        doc["events"][0]["payload"],
        json!({"approved": true, "by": "ana"})
    );
    assert_eq!(
        doc["status"]["kind"], "waiting",
        "stored, delivered when the service runs it"
    );

    let cancelled = store(d, 0, &["cancel", SLEEPING]).await;
    assert!(
        cancelled.stdout.contains("cancelled order-sleeping"),
        "{}",
        cancelled.stdout
    );
    let doc = store(d, 0, &["show", SLEEPING, "--json"]).await.json();
    assert_eq!(doc["status"]["kind"], "cancelled");
    let finished = store(d, 1, &["cancel", COMPLETED]).await;
    assert!(
        finished.stderr.contains("already finished"),
        "{}",
        finished.stderr
    );

    let resume = store(d, 1, &["resume", BLOCKED]).await;
    assert!(
        resume.stderr.contains("not registered"),
        "{}",
        resume.stderr
    );

    // Bulk actions need confirmation; there is no terminal here.
    let bulk = store(d, 2, &["cancel", "--status", "running,blocked"]).await;
    assert!(
        bulk.stderr
            .contains("cancel 2 instances: confirm with --yes"),
        "{}",
        bulk.stderr
    );
    let dry = store(d, 0, &["cancel", "--status", "running", "--dry-run"]).await;
    assert_eq!(dry.stdout.trim(), format!("would cancel {RUNNING}"));
    let doc = store(d, 0, &["show", RUNNING, "--json"]).await.json();
    assert_eq!(doc["status"]["kind"], "running");
    let yes = store(
        d,
        0,
        &["cancel", "--status", "running,blocked", "--yes", "--json"],
    )
    .await
    .json();
    assert_eq!(yes["results"].as_array().unwrap().len(), 2);
    let still = store(d, 0, &["list", "--status", "running,blocked", "--json"])
        .await
        .json();
    assert!(still["instances"].as_array().unwrap().is_empty());

    // Usage errors: exit 2.
    let none = durable(&["list"]).await;
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("no target"), "{}", none.stderr);
    assert_eq!(durable(&["--store", "x", "frobnicate"]).await.code, 2);
    let bad_time = store(d, 2, &["list", "--since", "yesterday"]).await;
    assert!(
        bad_time.stderr.contains("give an age"),
        "{}",
        bad_time.stderr
    );
    store(d, 2, &["list", "--status", "sleepy"]).await;
    let two = durable(&["--store", "x", "--url", "http://127.0.0.1:9/admin", "list"]).await;
    assert_eq!(two.code, 2, "{}", two.stderr);
    assert!(two.stderr.contains("give one target"), "{}", two.stderr);
    if cfg!(not(feature = "postgres")) {
        let pg = durable(&["--postgres", "postgres://127.0.0.1/x", "list"]).await;
        assert_eq!(pg.code, 1);
        assert!(
            pg.stderr.contains("has no PostgreSQL backend")
                && pg.stderr.contains("--features cli,postgres"),
            "{}",
            pg.stderr
        );
    }
    let gone = durable(&["--store", d.join("nope").to_str().unwrap(), "list"]).await;
    assert_eq!(gone.code, 1);

    // The deploy gate against another build's manifests.
    let manifests = d.join("manifests.txt");
    let text = durable::manifest_of(order).to_text();
    std::fs::write(&manifests, &text).unwrap();
    let m = manifests.to_str().unwrap();
    let ok = store(d, 0, &["check", "--manifests", m]).await;
    assert!(
        ok.stdout.contains("every unfinished instance can run"),
        "{}",
        ok.stdout
    );
    std::fs::write(&manifests, text.replace("step price:", "step quote:")).unwrap();
    let bad = store(d, 1, &["check", "--manifests", m]).await;
    assert!(
        bad.stdout
            .contains(&format!("instance {WAITING} (order): step `price` is gone")),
        "{}",
        bad.stdout
    );
    let report = store(d, 1, &["check", "--manifests", m, "--json"])
        .await
        .json();
    assert_eq!(report["ok"], false);
    store(d, 2, &["check"]).await;

    // The event sent as JSON is what the typed wait reads: the service
    // (with the workflow) finishes the instance with it.
    BROKEN.store(false, Ordering::SeqCst);
    let engine = Engine::builder()
        .path(d)
        .register(order)
        .open()
        .await
        .unwrap();
    until_status(&engine, WAITING, StatusKind::Completed).await;
    let output = engine
        .attach(order, WAITING)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(output, Ok("charged 1350 approved by ana".to_string()));
    engine.shutdown().await;
}

/// Serves `router` on 127.0.0.1 (any port) under `/admin`; its URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().nest("/admin", router))
            .await
            .unwrap();
    });
    format!("http://{addr}/admin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_commands_through_the_admin_endpoint() {
    let _serial = SERIAL.lock().await;
    use durable::admin::{AdminOptions, router};
    let dir = tempfile::tempdir().unwrap();
    let engine = build(dir.path()).await;
    let url = serve(router(
        engine.clone(),
        AdminOptions::new().token("s3cret".to_string()),
    ))
    .await;
    let read_only = serve(router(engine.clone(), AdminOptions::new())).await;

    let listed = durable(&["--url", &url, "list", "--json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let instances = listed.json()["instances"].as_array().unwrap().clone();
    assert_eq!(instances.len(), ALL.len());
    let running = instances.iter().find(|i| i["id"] == RUNNING).unwrap();
    assert_eq!(running["status"]["steps"][0]["name"], "hang", "{running}");
    let show = durable(&["--url", &url, "show", RUNNING]).await;
    assert!(
        show.stdout.contains("hang (step, running)"),
        "{}",
        show.stdout
    );

    // The store is held by the service: --store says so and points to --url.
    let locked = durable(&["--store", dir.path().to_str().unwrap(), "list"]).await;
    assert_eq!(locked.code, 1);
    assert!(locked.stderr.contains("--url"), "{}", locked.stderr);

    // Actions need the token; a read-only endpoint refuses them.
    let anonymous = durable(&["--url", &url, "resume", BLOCKED]).await;
    assert_eq!(anonymous.code, 1);
    assert!(anonymous.stderr.contains("Bearer"), "{}", anonymous.stderr);
    let wrong = durable(&["--url", &url, "--token", "guess", "resume", BLOCKED]).await;
    assert_eq!(wrong.code, 1);
    assert!(
        wrong.stderr.contains("wrong bearer token"),
        "{}",
        wrong.stderr
    );
    let refused = durable(&["--url", &read_only, "--token", "s3cret", "cancel", WAITING]).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("read-only"), "{}", refused.stderr);
    assert_eq!(
        engine.status(BLOCKED).await.unwrap().kind(),
        StatusKind::Blocked
    );

    // With the token: the blocked instance resumes once its cause is fixed.
    BROKEN.store(false, Ordering::SeqCst);
    let resumed = durable(&["--url", &url, "--token", "s3cret", "resume", BLOCKED]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    until_status(&engine, BLOCKED, StatusKind::Completed).await;
    let sent = durable(&[
        "--url",
        &url,
        "--token",
        "s3cret",
        "send-event",
        WAITING,
        "approval",
        r#"{"approved": false, "by": "bo"}"#,
    ])
    .await;
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    until_status(&engine, WAITING, StatusKind::Completed).await;
    let doc = durable(&["--url", &url, "history", WAITING, "--json"])
        .await
        .json();
    assert_eq!(doc["output"], json!({"Err": "rejected by bo"}));
    let approval = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "approval")
        .unwrap();
    assert_eq!(approval["kind"], "wait");
    assert_eq!(approval["outcome"], "received");
    assert_eq!(approval["payload"], json!({"approved": false, "by": "bo"}));

    let check = durable(&["--url", &url, "check"]).await;
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let stats = durable(&["--url", &url, "stats", "--json"]).await.json();
    assert_eq!(stats["by_status"]["completed"], 4);
    let unreachable = durable(&["--url", "http://127.0.0.1:9/admin", "list"]).await;
    assert_eq!(unreachable.code, 1);
    assert!(
        unreachable.stderr.contains("cannot reach"),
        "{}",
        unreachable.stderr
    );
    engine.shutdown().await;
}

/// A failed instance of its own (the fixture's `FAILED` id is shared by
/// every test): `id` panics in its "explode" step until [`extinguish`]d.
async fn fail(engine: &Engine, id: &str) {
    let input = Order {
        sku: "panic".into(),
        cents: 1250,
    };
    assert!(engine.run(order, id, input).await.is_err());
    until_status(engine, id, StatusKind::Failed).await;
}

fn kinds(doc: &Value) -> Vec<String> {
    doc["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap().to_string())
        .collect()
}

fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_pause_fork_and_purge_on_a_store() {
    let _serial = SERIAL.lock().await;
    const FIRE: &str = "order-fire-store";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let engine = build(d).await;
    fail(&engine, FIRE).await;
    engine.shutdown().await;

    // Retry: refused for a completed instance, a bulk retry needs --yes.
    let done = store(d, 1, &["retry", COMPLETED]).await;
    assert!(
        done.stderr
            .contains("only a failed, blocked or needs-attention instance"),
        "{}",
        done.stderr
    );
    store(d, 1, &["retry", "nope"]).await;
    let bulk = store(d, 2, &["retry", "--status", "failed"]).await;
    assert!(
        bulk.stderr
            .contains("retry 2 instances: confirm with --yes"),
        "{}",
        bulk.stderr
    );
    let dry = store(d, 0, &["retry", "--status", "failed", "--dry-run"]).await;
    assert!(
        dry.stdout.contains(&format!("would retry {FIRE}")),
        "{}",
        dry.stdout
    );
    let retried = store(d, 0, &["retry", FIRE]).await;
    assert_eq!(retried.stdout.trim(), format!("retried {FIRE}"));
    let doc = store(d, 0, &["show", FIRE, "--json"]).await.json();
    assert_eq!(doc["status"]["kind"], "running", "{doc}");
    assert_eq!(kinds(&doc).last().unwrap(), "retried");
    let again = store(d, 0, &["retry", FIRE, "--json"]).await.json();
    assert_eq!(
        again["results"][0]["ok"], true,
        "retrying again does nothing"
    );

    // Pause and unpause, shown by show and list; refused for a finished one.
    let paused = store(d, 0, &["pause", WAITING, SLEEPING, "--yes"]).await;
    assert!(paused.stderr.is_empty(), "{}", paused.stderr);
    assert!(
        paused.stdout.contains(&format!("paused {WAITING}")),
        "{}",
        paused.stdout
    );
    let show = store(d, 0, &["show", WAITING]).await.stdout;
    assert!(show.contains("paused"), "{show}");
    let list = store(d, 0, &["list", "--status", "paused", "--json"])
        .await
        .json();
    let mut ids: Vec<&str> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [SLEEPING, WAITING]);
    let line = store(d, 0, &["list"]).await.stdout;
    let line = line.lines().find(|l| l.starts_with(WAITING)).unwrap();
    assert!(line.contains("paused"), "{line}");
    let finished = store(d, 1, &["pause", COMPLETED]).await;
    assert!(
        finished.stderr.contains("already finished"),
        "{}",
        finished.stderr
    );
    let unpaused = store(d, 0, &["unpause", WAITING, "--json"]).await.json();
    assert_eq!(unpaused["action"], "unpause");
    assert_eq!(unpaused["results"][0]["ok"], true);
    let doc = store(d, 0, &["show", WAITING, "--json"]).await.json();
    assert_eq!(doc["status"]["kind"], "waiting");
    let text = store(d, 0, &["history", WAITING]).await.stdout;
    let line = text.lines().find(|l| l.contains(" paused by ")).unwrap();
    assert!(
        line.ends_with(')') && line.contains("(pid "),
        "who paused it: {text}"
    );
    let history = kinds(&doc);
    assert!(
        history.ends_with(&["paused".into(), "unpaused".into()]),
        "{history:?}"
    );

    // Fork: a derived id printed alone, then the next free one, or the given one.
    let source = store(d, 0, &["history", COMPLETED, "--json"]).await.json();
    let first = store(d, 0, &["fork", COMPLETED, "--from-step", "charge"]).await;
    assert_eq!(first.stdout, format!("{COMPLETED}-fork-1\n"));
    let second = store(d, 0, &["fork", COMPLETED, "--from-step", "charge"]).await;
    assert_eq!(second.stdout.trim(), format!("{COMPLETED}-fork-2"));
    let named = store(
        d,
        0,
        &[
            "fork",
            COMPLETED,
            "--from-step",
            "price",
            "--new-id",
            "order-anew",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(named["new_id"], "order-anew");
    assert_eq!(named["from_step"], "price");
    let no_step = store(d, 1, &["fork", COMPLETED, "--from-step", "nosuch"]).await;
    assert!(
        no_step.stderr.contains("has recorded no step"),
        "{}",
        no_step.stderr
    );
    let taken = store(
        d,
        1,
        &["fork", FIRE, "--from-step", "price", "--new-id", COMPLETED],
    )
    .await;
    assert!(taken.stderr.contains("already exists"), "{}", taken.stderr);
    store(d, 1, &["fork", "nope", "--from-step", "price"]).await;
    store(d, 2, &["fork", COMPLETED]).await;
    let fork = store(d, 0, &["history", &format!("{COMPLETED}-fork-1"), "--json"])
        .await
        .json();
    assert_eq!(fork["status"]["kind"], "running");
    assert!(kinds(&fork).contains(&"forked".to_string()), "{fork}");
    let steps = fork["steps"].as_array().unwrap();
    assert_eq!(
        steps.len(),
        1,
        "only the steps before the fork point: {fork}"
    );
    assert_eq!(step(&fork, "price"), step(&source, "price"));

    // The service (with the workflow) runs what the commands set going.
    extinguish(FIRE);
    BROKEN.store(false, Ordering::SeqCst);
    let service = Engine::builder()
        .path(d)
        .register(order)
        .open()
        .await
        .unwrap();
    let charged = Ok("charged 1350 approved by auto".to_string());
    for id in [FIRE, &format!("{COMPLETED}-fork-1"), "order-anew"] {
        until_status(&service, id, StatusKind::Completed).await;
        let out = service
            .attach(order, id)
            .await
            .unwrap()
            .result()
            .await
            .unwrap();
        assert_eq!(out, charged, "{id}");
    }
    service.shutdown().await;
    let fire = store(d, 0, &["history", FIRE, "--json"]).await.json();
    assert_eq!(step(&fire, "explode")["outcome"], "ok", "{fire}");
    let fork = store(d, 0, &["history", &format!("{COMPLETED}-fork-1"), "--json"])
        .await
        .json();
    // The step before the fork point was replayed, not run again.
    assert_eq!(step(&fork, "price"), step(&source, "price"));
    assert_eq!(step(&fork, "charge")["outcome"], "ok");
    assert!(
        step(&fork, "charge")["started_at_ms"].as_u64()
            > step(&source, "charge")["started_at_ms"].as_u64()
    );

    // Purge: needs --yes without a terminal, a time or an age, and says how many.
    let unconfirmed = store(d, 2, &["purge", "--older-than", "0s"]).await;
    assert!(
        unconfirmed.stderr.contains("confirm with --yes"),
        "{}",
        unconfirmed.stderr
    );
    store(d, 2, &["purge", "--yes"]).await;
    store(d, 2, &["purge", "--older-than", "yesterday", "--yes"]).await;
    store(d, 2, &["purge", "--finished-before", "soon", "--yes"]).await;
    let none = store(d, 0, &["purge", "--finished-before", "2000-01-01", "--yes"]).await;
    assert!(
        none.stdout
            .starts_with("purged 0 instances finished before 2000-01-01"),
        "{}",
        none.stdout
    );
    let finished = store(
        d,
        0,
        &[
            "list",
            "--status",
            "completed,failed,cancelled",
            "--all",
            "--json",
        ],
    )
    .await
    .json();
    let mut ids: Vec<&str> = finished["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let fork_1 = format!("{COMPLETED}-fork-1");
    let fork_2 = format!("{COMPLETED}-fork-2");
    // The blocked one completed too: the service runs it with the printer fixed.
    let mut expected = vec![
        COMPLETED,
        COMPLETED_ERR,
        FAILED,
        CANCELLED,
        BLOCKED,
        FIRE,
        &fork_1,
        &fork_2,
        "order-anew",
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let finished = ids.len();
    let total = store(d, 0, &["stats", "--json"]).await.json()["total"]
        .as_u64()
        .unwrap();
    let purged = store(d, 0, &["purge", "--older-than", "0s", "--yes", "--json"])
        .await
        .json();
    assert_eq!(purged["purged"], finished);
    let stats = store(d, 0, &["stats", "--json"]).await.json();
    assert_eq!(stats["total"].as_u64().unwrap(), total - finished as u64);
    store(d, 1, &["show", COMPLETED]).await;
    let left = store(d, 0, &["show", WAITING, "--json"]).await.json();
    assert_eq!(
        left["status"]["kind"], "waiting",
        "unfinished instances stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_pause_and_fork_through_the_admin_endpoint() {
    let _serial = SERIAL.lock().await;
    use durable::admin::{AdminOptions, router};
    const FIRE: &str = "order-fire-url";
    let dir = tempfile::tempdir().unwrap();
    let engine = build(dir.path()).await;
    fail(&engine, FIRE).await;
    let url = serve(router(
        engine.clone(),
        AdminOptions::new().token("s3cret".to_string()),
    ))
    .await;
    let with = ["--url", url.as_str(), "--token", "s3cret"];

    // Actions need the token.
    let anonymous = expect(&["--url", &url], 1, &["retry", FIRE]).await;
    assert!(anonymous.stderr.contains("Bearer"), "{}", anonymous.stderr);
    assert_eq!(
        engine.status(FIRE).await.unwrap().kind(),
        StatusKind::Failed
    );

    // Retry: the service runs it again from the failed step and it completes.
    extinguish(FIRE);
    BROKEN.store(false, Ordering::SeqCst);
    let retried = expect(&with, 0, &["retry", FIRE]).await;
    assert_eq!(retried.stdout.trim(), format!("retried {FIRE}"));
    until_status(&engine, FIRE, StatusKind::Completed).await;
    let doc = expect(&with, 0, &["history", FIRE, "--json"]).await.json();
    assert_eq!(
        doc["output"],
        json!({"Ok": "charged 1350 approved by auto"})
    );
    assert!(kinds(&doc).contains(&"retried".to_string()), "{doc}");

    // Pause holds an event until unpause.
    expect(&with, 0, &["pause", WAITING]).await;
    let approve = r#"{"approved": true, "by": "cy"}"#;
    expect(&with, 0, &["send-event", WAITING, "approval", approve]).await;
    let shown = expect(&with, 0, &["show", WAITING, "--json"]).await.json();
    assert_eq!(shown["status"]["kind"], "paused", "{shown}");
    assert_eq!(shown["events"][0]["name"], "approval", "stored meanwhile");
    expect(&with, 0, &["unpause", WAITING]).await;
    until_status(&engine, WAITING, StatusKind::Completed).await;

    // Fork: the service runs the new instance; --json answers its id.
    let forked = expect(
        &with,
        0,
        &["fork", COMPLETED, "--from-step", "charge", "--json"],
    )
    .await
    .json();
    let new_id = forked["new_id"].as_str().unwrap().to_string();
    assert_eq!(new_id, format!("{COMPLETED}-fork-1"));
    until_status(&engine, &new_id, StatusKind::Completed).await;
    let refused = expect(&with, 1, &["fork", COMPLETED, "--from-step", "nosuch"]).await;
    assert!(
        refused.stderr.contains("has recorded no step"),
        "{}",
        refused.stderr
    );

    // The HTTP answers: status codes and typed error bodies; parameters
    // from the query string too.
    let base = url.clone();
    let post = move |path: &str, body: &str| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .post(&format!("{base}{path}"))
            .header("Authorization", "Bearer s3cret")
            .send(body.to_string())
            .unwrap();
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap();
        (status, value)
    };
    let answers = tokio::task::spawn_blocking(move || {
        [
            post("/instances/nope/retry", ""),
            post(&format!("/instances/{COMPLETED}/retry"), ""),
            post(&format!("/instances/{COMPLETED}/fork?from_step=nosuch"), ""),
            post(&format!("/instances/{COMPLETED}/fork?from_step=charge"), ""),
            post(
                &format!("/instances/{COMPLETED}/fork?from_step=nosuch"),
                r#"{"from_step": "price", "new_id": "order-ok-copy"}"#,
            ),
            post(&format!("/instances/{FIRE}/fork"), ""),
            post(
                &format!("/instances/{COMPLETED}/fork?from_step=price&new_id={FIRE}"),
                "",
            ),
            post(&format!("/instances/{COMPLETED}/pause"), ""),
            post("/purge", ""),
            post("/purge", r#"{"finished_before_ms": "soon"}"#),
            post("/purge?finished_before_ms=1", ""),
        ]
    })
    .await
    .unwrap();
    let summary: Vec<(u16, Value)> = answers
        .iter()
        .map(|(status, v)| (*status, v["error"]["kind"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (404, json!("not-found")),
            (409, json!("not-retryable")),
            (404, json!("no-such-step")),
            (200, Value::Null),
            (200, Value::Null),
            (400, json!("usage")),
            (409, json!("id-conflict")),
            (409, json!("finished")),
            (400, json!("usage")),
            (400, json!("usage")),
            (200, Value::Null),
        ],
        "{answers:?}"
    );
    assert_eq!(answers[3].1["new_id"], format!("{COMPLETED}-fork-2"));
    assert_eq!(answers[4].1["new_id"], "order-ok-copy", "the body wins");
    assert_eq!(answers[10].1["purged"], 0);

    // Purge through the endpoint.
    let purged = expect(
        &with,
        0,
        &[
            "purge",
            "--finished-before",
            "2000-01-01T00:00:00Z",
            "--yes",
        ],
    )
    .await;
    assert!(
        purged.stdout.starts_with("purged 0 instances"),
        "{}",
        purged.stdout
    );
    engine.shutdown().await;
}
