//! The operator actions of the admin API beyond cancel, resume and events:
//! retry, fork, pause, unpause and purge. Their parameters come from the
//! JSON body (an object) or the query string; the body wins.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use durable_runtime::{Error, UsageError};
use serde_json::{Map, Value, json};

use super::api::{ApiRequest, Reply, engine_error, error, query_pairs};
use crate::Engine;

/// How many derived fork ids (`{id}-fork-{n}`) are tried before giving up.
const MAX_FORK_SUFFIX: u32 = 10_000;

/// The parameters of an action: the body's object merged over the query.
struct Params(Map<String, Value>);

impl Params {
    fn of(request: &ApiRequest<'_>) -> Result<Params, (u16, Value)> {
        let mut params = Map::new();
        for (key, value) in query_pairs(request.query)? {
            params.insert(key, Value::String(value));
        }
        let body = request.body;
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(fields)) => params.extend(fields),
                Ok(Value::Null) => {}
                Ok(_) => return Err(error(400, "usage", "the body must be a JSON object")),
                Err(e) => return Err(error(400, "usage", format!("the body is not JSON: {e}"))),
            }
        }
        Ok(Params(params))
    }

    /// A string parameter (absent, null or empty: `None`).
    fn text(&self, key: &str) -> Result<Option<String>, (u16, Value)> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(error(
                400,
                "usage",
                format!("{key}: expected a string, got {other}"),
            )),
        }
    }

    /// A non-negative integer parameter, as a JSON number or a string.
    fn millis(&self, key: &str) -> Result<Option<u64>, (u16, Value)> {
        let bad = || {
            error(
                400,
                "usage",
                format!("{key}: expected milliseconds (a non-negative integer)"),
            )
        };
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }
}

/// `POST /instances/{id}/fork`: `from_step` (required), `new_id`
/// (optional: derived as the first free `{id}-fork-{n}`). Answers the new id.
pub(super) async fn fork(engine: &Engine, id: &str, request: &ApiRequest<'_>) -> Reply {
    let params = Params::of(request)?;
    let Some(step) = params.text("from_step")? else {
        return Err(error(
            400,
            "usage",
            "fork needs `from_step`: the step to run again from",
        ));
    };
    let new_id = match params.text("new_id")? {
        Some(new_id) => new_id,
        None => {
            // The source must exist before a name is derived from it.
            engine.status(id).await.map_err(|e| engine_error(&e))?;
            free_fork_id(engine, id).await?
        }
    };
    engine
        .fork(id, &step, &new_id)
        .await
        .map_err(|e| engine_error(&e))?;
    Ok(json!({"ok": true, "action": "fork", "id": id, "from_step": step, "new_id": new_id}))
}

/// The first `{id}-fork-{n}` (n = 1, 2, ..) that names no instance.
async fn free_fork_id(engine: &Engine, id: &str) -> Result<String, (u16, Value)> {
    for n in 1..=MAX_FORK_SUFFIX {
        let candidate = format!("{id}-fork-{n}");
        match engine.status(&candidate).await {
            Err(Error::Usage(UsageError::NotFound { .. })) => return Ok(candidate),
            Err(e) => return Err(engine_error(&e)),
            Ok(_) => {}
        }
    }
    Err(error(
        409,
        "id-conflict",
        format!("{id}-fork-1 to -{MAX_FORK_SUFFIX} are all taken: give `new_id`"),
    ))
}

/// `POST /purge`: `finished_before_ms` (milliseconds since the Unix epoch)
/// or `older_than_ms` (finished more than this long before the server's
/// clock). Answers how many instances were deleted.
pub(super) async fn purge(engine: &Engine, request: &ApiRequest<'_>) -> Reply {
    let params = Params::of(request)?;
    let before = match (
        params.millis("finished_before_ms")?,
        params.millis("older_than_ms")?,
    ) {
        (Some(ms), None) => UNIX_EPOCH + Duration::from_millis(ms),
        (None, Some(age)) => SystemTime::now()
            .checked_sub(Duration::from_millis(age))
            .unwrap_or(UNIX_EPOCH),
        (Some(_), Some(_)) => {
            return Err(error(
                400,
                "usage",
                "give either `finished_before_ms` or `older_than_ms`, not both",
            ));
        }
        (None, None) => {
            return Err(error(
                400,
                "usage",
                "purge needs `finished_before_ms` (epoch milliseconds) or `older_than_ms`",
            ));
        }
    };
    let purged = engine.purge(before).await.map_err(|e| engine_error(&e))?;
    let before_ms = before
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(json!({"ok": true, "action": "purge", "purged": purged, "finished_before_ms": before_ms}))
}
