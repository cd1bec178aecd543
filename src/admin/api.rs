//! The admin API as one function from a request to a status and a JSON
//! body, shared by the axum router and the command line's direct access to
//! a store (so both behave the same).

use std::time::{Duration, UNIX_EPOCH};

use durable_runtime::{Error, InstanceError, ListFilter, UsageError, parse_status};
use serde_json::{Value, json};

use super::{AdminOptions, actions};
use crate::Engine;

/// Every action the API offers (`POST`), as `GET /info` lists them.
const ACTIONS: [&str; 8] = [
    "cancel",
    "resume",
    "send-event",
    "retry",
    "fork",
    "pause",
    "unpause",
    "purge",
];

/// A success's JSON body, or an error's status code and JSON body.
pub(super) type Reply = Result<Value, (u16, Value)>;

/// One request, as the router or the command line sees it.
pub(crate) struct ApiRequest<'a> {
    /// `POST` (an action) rather than `GET`.
    pub post: bool,
    /// The path below the mount point: `/instances/abc/history`.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: &'a str,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The body (an event's JSON payload).
    pub body: &'a [u8],
}

pub(super) fn error(status: u16, kind: &str, message: impl Into<String>) -> (u16, Value) {
    (
        status,
        json!({"error": {"kind": kind, "message": message.into()}}),
    )
}

/// The status code and kind of an engine error.
pub(super) fn engine_error(e: &Error) -> (u16, Value) {
    let (status, kind) = match e {
        Error::Usage(UsageError::NotFound { .. }) => (404, "not-found"),
        Error::Usage(UsageError::NoSuchStep { .. }) => (404, "no-such-step"),
        Error::Usage(UsageError::InstanceFinished { .. }) => (409, "finished"),
        Error::Usage(UsageError::NotRegistered { .. }) => (409, "not-registered"),
        Error::Usage(UsageError::NotRetryable { .. }) => (409, "not-retryable"),
        Error::Usage(UsageError::IdConflict { .. }) => (409, "id-conflict"),
        Error::Usage(UsageError::NotSupported { .. }) => (501, "not-supported"),
        Error::Usage(UsageError::EventTypeMismatch { .. } | UsageError::InvalidJson { .. }) => {
            (400, "invalid-payload")
        }
        Error::Usage(_) => (400, "usage"),
        Error::Instance(InstanceError::Failed { .. }) => (409, "failed"),
        Error::Instance(_) => (409, "instance"),
        Error::Replay(_) => (409, "replay"),
        Error::Store(_) => (500, "store"),
        _ => (500, "other"),
    };
    error(status, kind, e.to_string())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes `s` for one path segment or query value.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, (u16, Value)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (percent_decode(k), percent_decode(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(error(400, "usage", format!("bad query parameter {pair:?}"))),
            }
        })
        .collect()
}

fn list_filter(query: &str) -> Result<ListFilter, (u16, Value)> {
    let mut filter = ListFilter::new().limit(50);
    for (key, value) in query_pairs(query)? {
        let bad = |what: &str| error(400, "usage", format!("{key}={value:?}: {what}"));
        match key.as_str() {
            "status" => {
                for name in value.split(',').filter(|s| !s.is_empty()) {
                    let kind = parse_status(name).ok_or_else(|| {
                        bad("not a status (running, sleeping, waiting, blocked, needs-attention, incompatible, completed, failed, cancelled)")
                    })?;
                    filter = filter.status(kind);
                }
            }
            "workflow" if !value.is_empty() => filter = filter.workflow(value.clone()),
            "workflow" => {}
            "queue" if !value.is_empty() => filter = filter.queue(value.clone()),
            "queue" => {}
            "limit" => {
                let n: usize = value.parse().map_err(|_| bad("not a number"))?;
                filter = filter.limit(n.min(1000));
            }
            "after" if !value.is_empty() => {
                filter = filter.after(value.parse().map_err(|_| bad("not a cursor"))?);
            }
            "after" => {}
            "since_ms" | "until_ms" => {
                let ms: u64 = value.parse().map_err(|_| bad("not milliseconds"))?;
                let t = UNIX_EPOCH + Duration::from_millis(ms);
                filter = if key == "since_ms" {
                    filter.created_after(t)
                } else {
                    filter.created_before(t)
                };
            }
            _ => return Err(bad("unknown parameter")),
        }
    }
    Ok(filter)
}

/// Whether `request` may act; `Err` with 401/403 otherwise.
fn authorize(options: &AdminOptions, request: &ApiRequest<'_>) -> Result<(), (u16, Value)> {
    let Some(token) = &options.token else {
        return Err(error(
            403,
            "read-only",
            "this admin endpoint is read-only: set AdminOptions::token to allow actions",
        ));
    };
    let given = request
        .authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        // Compared in constant time with respect to the contents.
        Some(given)
            if given.len() == token.len()
                && given
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0 =>
        {
            Ok(())
        }
        Some(_) => Err(error(401, "unauthorized", "wrong bearer token")),
        None => Err(error(
            401,
            "unauthorized",
            "actions need `Authorization: Bearer <token>`",
        )),
    }
}

/// Handles one API request: a status code and a JSON body.
pub(crate) async fn handle(
    engine: &Engine,
    options: &AdminOptions,
    request: ApiRequest<'_>,
) -> (u16, Value) {
    match route(engine, options, &request).await {
        Ok(value) => (200, value),
        Err(response) => response,
    }
}

async fn route(engine: &Engine, options: &AdminOptions, request: &ApiRequest<'_>) -> Reply {
    let segments: Vec<String> = request
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s).ok_or_else(|| error(400, "usage", "bad path")))
        .collect::<Result<_, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let e = |e: Error| engine_error(&e);
    if request.post {
        authorize(options, request)?;
        return match segments.as_slice() {
            ["instances", id, "cancel"] => {
                engine.cancel(id).await.map_err(e)?;
                Ok(json!({"ok": true, "action": "cancel", "id": id}))
            }
            ["instances", id, "resume"] => {
                engine.resume_instance(id).await.map_err(e)?;
                Ok(json!({"ok": true, "action": "resume", "id": id}))
            }
            ["instances", id, "events", name] => {
                let payload: Value = serde_json::from_slice(request.body).map_err(|err| {
                    error(
                        400,
                        "invalid-payload",
                        format!("the body is not JSON: {err}"),
                    )
                })?;
                engine
                    .send_event_json(id, name, &payload)
                    .await
                    .map_err(e)?;
                Ok(json!({"ok": true, "action": "send-event", "id": id, "event": name}))
            }
            ["instances", id, "retry"] => {
                engine.retry(id).await.map_err(e)?;
                Ok(json!({"ok": true, "action": "retry", "id": id}))
            }
            ["instances", id, "pause"] => {
                engine.pause(id).await.map_err(e)?;
                Ok(json!({"ok": true, "action": "pause", "id": id}))
            }
            ["instances", id, "unpause"] => {
                engine.unpause(id).await.map_err(e)?;
                Ok(json!({"ok": true, "action": "unpause", "id": id}))
            }
            ["instances", id, "fork"] => actions::fork(engine, id, request).await,
            ["purge"] => actions::purge(engine, request).await,
            _ => Err(error(
                404,
                "no-route",
                format!("no action at {}", request.path),
            )),
        };
    }
    match segments.as_slice() {
        ["instances"] => engine
            .list_json(&list_filter(request.query)?)
            .await
            .map_err(e),
        ["instances", id] | ["instances", id, "history"] => {
            engine.history_json(id).await.map_err(e)
        }
        ["stats"] => engine.stats_json().await.map_err(e),
        ["schedules"] => {
            let schedules = engine.schedules().await.map_err(e)?;
            Ok(json!({"schedules": schedules.iter().map(|s| json!({
                "name": s.name,
                "workflow": s.workflow,
                "cron": s.cron,
                "missed": format!("{:?}", s.missed),
                "paused": s.paused,
                "last_tick_ms": s.last_tick_ms,
                "next_tick_ms": s.next_tick_ms,
            })).collect::<Vec<_>>()}))
        }
        ["queues"] => engine.queues_json().await.map_err(e),
        ["check"] => {
            let found = engine.compatibility().await.map_err(e)?;
            Ok(check_json(&found))
        }
        ["info"] => Ok(json!({
            "actions": options.token.is_some(),
            "supported": ACTIONS,
        })),
        _ => Err(error(
            404,
            "no-route",
            format!("nothing at {}", request.path),
        )),
    }
}

/// The findings of a deploy gate as JSON: `{"ok": bool, "findings": [..]}`.
pub(crate) fn check_json(found: &[durable_runtime::Incompatibility]) -> Value {
    json!({
        "ok": found.iter().all(|f| f.instance.is_none()),
        "findings": found.iter().map(|f| json!({
            "instance": f.instance,
            "workflow": f.workflow,
            "reason": f.reason,
        })).collect::<Vec<_>>(),
    })
}
