//! The admin web page in a real browser: Chromium driven headless over
//! WebDriver (Debian's `chromium` and `chromium-driver`) against the admin
//! router serving a store with instances in every status. It checks the
//! list and its counts, opens instances and reads their timelines, resumes
//! a blocked instance with the token and sees it complete, retries a failed
//! one from its failed step and sees it complete, pauses and unpauses a
//! waiting one, forks a completed one from a step, and saves a screenshot
//! of each view in `target/admin-screenshots/`.
//!
//! Without chromedriver the test fails when `CI` is set, and otherwise
//! prints "skipped" and passes.

#[path = "ops_fixture/mod.rs"]
mod fixture;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use durable::StatusKind;
use durable::admin::{AdminOptions, router};
use fixture::*;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// A hang guard for each wait on the page (generous: never a timing assertion).
const GUARD: Duration = Duration::from_secs(120);

/// A WebDriver session over plain HTTP.
struct Browser {
    agent: ureq::Agent,
    base: String,
    driver: Child,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + GUARD;
        loop {
            let ready = agent
                .get(&format!("{url}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut browser = Browser {
            agent,
            base: url,
            driver,
        };
        let session = browser.send(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1400,1100"]
                }
            }}}),
        );
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    fn send(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(&body),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap();
        assert!(status < 300, "{method} {path}: {status} {value}");
        value["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.send("POST", "/url", json!({"url": url}));
    }

    /// Opens an instance the way a link does: by the page's hash.
    fn open(&self, id: &str) {
        self.run(&format!("location.hash = '#/i/{id}'; return null"));
    }

    fn run(&self, script: &str) -> Value {
        self.send(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Waits until `script` returns something other than null or false.
    fn wait(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + GUARD;
        loop {
            let v = self.run(script);
            if !v.is_null() && v != false {
                return v;
            }
            assert!(Instant::now() < deadline, "page never showed {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = self.send(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// Clicks the element `css` (in one script: the page redraws itself
    /// every few seconds, which would make a found element stale).
    fn click(&self, css: &str) {
        let css = serde_json::to_string(css).unwrap();
        self.wait(
            &format!("{css} to click"),
            &format!("const e = document.querySelector({css}); if (!e) return false; e.click(); return true"),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.send(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        );
    }

    fn screenshot(&self, dir: &Path, name: &str) {
        let png = self.send("GET", "/screenshot", Value::Null);
        let bytes = base64(png.as_str().expect("base64 screenshot"));
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/admin-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The bars of the timeline on the page: (step, kind, outcome, attempts).
const BARS: &str = "return Array.from(document.querySelectorAll('#timeline .tl-row')).map(r => { \
    const b = r.querySelector('.bar'); \
    return [r.dataset.step, b.dataset.kind, b.dataset.outcome, Number(b.dataset.attempts)]; })";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_in_chromium() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        );
        println!("skipped: no {CHROMEDRIVER} (apt-get install chromium chromium-driver)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = build(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest(
        "/admin",
        router(
            engine.clone(),
            AdminOptions::new().token("s3cret".to_string()),
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}/admin");
    let read_only = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().nest("/admin", router(engine.clone(), AdminOptions::new()));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/admin")
    };
    let shots = screenshots();

    let browser = tokio::task::spawn_blocking(move || {
        let browser = Browser::start();
        // The list, with its counts by status.
        browser.goto(&url);
        browser.wait("the counts", "return document.querySelector('#counts') !== null");
        let counts = browser.run(
            "const o = {}; for (const b of document.querySelectorAll('[data-count]')) \
             o[b.dataset.count] = Number(b.textContent); return o;",
        );
        for (_, kind) in ALL {
            let expected = ALL.iter().filter(|(_, k)| *k == kind).count();
            assert_eq!(counts[kind], expected, "count of {kind}: {counts}");
        }
        let rows = browser.run(
            "return Array.from(document.querySelectorAll('#instances tbody tr')).map(r => \
             [r.dataset.id, r.querySelector('[data-kind]').dataset.kind])",
        );
        let mut rows: Vec<(String, String)> = serde_json::from_value(rows).unwrap();
        rows.sort();
        let mut expected: Vec<(String, String)> =
            ALL.iter().map(|(i, k)| (i.to_string(), k.to_string())).collect();
        expected.sort();
        assert_eq!(rows, expected);
        browser.screenshot(&shots, "1-list.png");

        // A status filter.
        browser.click("[data-status=blocked]");
        browser.wait(
            "the blocked filter",
            "const r = document.querySelectorAll('#instances tbody tr'); \
             return r.length === 1 && r[0].dataset.id === 'order-blocked'",
        );
        browser.screenshot(&shots, "2-list-blocked.png");
        browser.click("[data-status=blocked]");
        browser.wait(
            "every instance again",
            &format!(
                "return document.querySelectorAll('#instances tbody tr').length === {}",
                ALL.len()
            ),
        );

        // An instance's timeline: a step, then a sleep that has not ended.
        browser.click("tr[data-id=order-sleeping]");
        browser.wait(
            "the sleeping instance",
            "const h = document.querySelector('#instance-id'); \
             return h && h.textContent === 'order-sleeping' && document.querySelector('#timeline .bar') !== null",
        );
        let bars = browser.run(BARS);
        assert_eq!(
            bars,
            json!([["price", "step", "ok", 1], ["cool-off", "sleep", "sleeping", 0]])
        );
        let current = browser.run("return document.querySelector('#current').textContent");
        assert_eq!(current, "cool-off (sleep, sleeping)");
        let input = browser.run("return document.querySelector('pre').textContent");
        assert!(input.as_str().unwrap().contains("1350"), "the price step's value: {input}");
        browser.screenshot(&shots, "3-instance-sleeping.png");

        // Back to the list by the page's link.
        browser.click("a[href='#/']");
        browser.wait("the list again", "return document.querySelector('#counts') !== null");

        // A completed instance: both steps with their values as JSON.
        browser.open("order-ok");
        browser.wait(
            "the completed instance",
            "const h = document.querySelector('#instance-id'); return h && h.textContent === 'order-ok'",
        );
        assert_eq!(
            browser.run(BARS),
            json!([["price", "step", "ok", 1], ["charge", "step", "ok", 1]])
        );
        let output = browser.run(
            "return Array.from(document.querySelectorAll('pre')).map(p => p.textContent).join('\\n')",
        );
        assert!(
            output.as_str().unwrap().contains("charged 1350 approved by auto"),
            "{output}"
        );
        browser.screenshot(&shots, "4-instance-completed.png");

        // The failed one: the step that panicked.
        browser.open("order-panics");
        browser.wait(
            "the failed instance",
            "const h = document.querySelector('#instance-id'); return h && h.textContent === 'order-panics'",
        );
        assert_eq!(
            browser.run(BARS),
            json!([["price", "step", "ok", 1], ["explode", "step", "panicked", 1]])
        );
        browser.screenshot(&shots, "5-instance-failed.png");

        // The blocked one: resume without the token is refused, with it the
        // instance resumes and completes.
        browser.open("order-blocked");
        browser.wait(
            "the blocked instance",
            "const s = document.querySelector('#status [data-kind]'); return s && s.dataset.kind === 'blocked'",
        );
        let detail = browser.run("return document.querySelector('#detail').textContent");
        assert!(detail.as_str().unwrap().contains("out of paper"), "{detail}");
        browser.screenshot(&shots, "6-instance-blocked.png");
        browser.click("#resume");
        browser.wait(
            "the refusal",
            "const m = document.querySelector('#message'); \
             return m && m.className === 'err' && m.textContent.includes('Bearer')",
        );
        browser
    })
    .await
    .unwrap();
    assert_eq!(
        engine.status(BLOCKED).await.unwrap().kind(),
        StatusKind::Blocked
    );
    BROKEN.store(false, Ordering::SeqCst);
    let shots = screenshots();
    let browser = tokio::task::spawn_blocking(move || {
        browser.type_into("#token", "s3cret");
        browser.click("#resume");
        browser.wait(
            "the resumed instance completed",
            "const s = document.querySelector('#status [data-kind]'); return s && s.dataset.kind === 'completed'",
        );
        assert_eq!(
            browser.run(BARS),
            json!([["price", "step", "ok", 1], ["charge", "step", "ok", 1]])
        );
        let transitions = browser.run(
            "return Array.from(document.querySelectorAll('td')).map(t => t.textContent).join(' ')",
        );
        assert!(transitions.as_str().unwrap().contains("resumed"), "{transitions}");
        browser.screenshot(&shots, "7-instance-resumed.png");
        browser
    })
    .await
    .unwrap();
    assert_eq!(
        engine.status(BLOCKED).await.unwrap().kind(),
        StatusKind::Completed
    );

    // The failed one, its fire put out: retried from the page, it runs again
    // from the step that panicked and completes.
    assert_eq!(
        engine.status(FAILED).await.unwrap().kind(),
        StatusKind::Failed
    );
    extinguish(FAILED);
    let shots = screenshots();
    let browser = tokio::task::spawn_blocking(move || {
        browser.open(FAILED);
        browser.wait(
            "the failed instance",
            "const s = document.querySelector('#status [data-kind]'); return s && s.dataset.kind === 'failed' \
             && !document.querySelector('#retry').disabled",
        );
        browser.click("#retry");
        browser.wait(
            "the retried instance completed",
            "const s = document.querySelector('#status [data-kind]'); return s && s.dataset.kind === 'completed'",
        );
        assert_eq!(
            browser.run(BARS),
            json!([["price", "step", "ok", 1], ["explode", "step", "ok", 1], ["charge", "step", "ok", 1]])
        );
        let transitions = browser.run(
            "return Array.from(document.querySelectorAll('td')).map(t => t.textContent).join(' ')",
        );
        assert!(transitions.as_str().unwrap().contains("retried"), "{transitions}");
        browser.screenshot(&shots, "8-instance-retried.png");

        // Pause and unpause the waiting one.
        browser.open(WAITING);
        browser.wait(
            "the waiting instance",
            "const s = document.querySelector('#status [data-kind]'); return s && s.dataset.kind === 'waiting'",
        );
        browser.click("#pause");
        browser.wait(
            "the paused instance",
            "const s = document.querySelector('#status [data-kind]'); return s && s.dataset.kind === 'paused' \
             && !document.querySelector('#unpause').disabled",
        );
        browser.screenshot(&shots, "9-instance-paused.png");
        browser.click("#unpause");
        browser.wait(
            "the unpaused instance waiting again",
            "const s = document.querySelector('#status [data-kind]'); return s && s.dataset.kind === 'waiting'",
        );

        // Fork the completed one from its "charge" step.
        browser.open(COMPLETED);
        browser.wait(
            "the completed instance's step picker",
            "const h = document.querySelector('#instance-id'); return h && h.textContent === 'order-ok' \
             && document.querySelectorAll('#fork-step option').length === 2",
        );
        browser.run("document.querySelector('#fork-step').value = 'charge'; return null");
        browser.click("#fork");
        browser.wait(
            "the new instance's id",
            "const m = document.querySelector('#message'); \
             return m && m.className === 'ok' && m.textContent === 'fork from charge: forked as order-ok-fork-1'",
        );
        browser.screenshot(&shots, "10-instance-forked.png");

        // A read-only endpoint: the actions are disabled, and say why.
        browser.goto(&format!("{read_only}#/i/{WAITING}"));
        let why = browser.wait(
            "the actions disabled",
            "const b = document.querySelector('#pause'); \
             return b && b.disabled && document.querySelector('#retry').disabled && b.title",
        );
        assert!(why.as_str().unwrap().contains("read-only"), "{why}");
        browser
    })
    .await
    .unwrap();
    drop(browser);
    until_status(&engine, FAILED, StatusKind::Completed).await;
    until_status(&engine, "order-ok-fork-1", StatusKind::Completed).await;
    let forked = engine.history_json("order-ok-fork-1").await.unwrap();
    let source = engine.history_json(COMPLETED).await.unwrap();
    assert_eq!(forked["steps"][0], source["steps"][0], "price replayed");
    engine.shutdown().await;
}
