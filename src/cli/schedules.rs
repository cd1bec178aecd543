//! `durable schedules`: the table of cron schedules.

use serde_json::Value;

use super::Style;
use super::format::{table as render, utc};

/// The `schedules` table: name, workflow, cron, policy, paused, last and
/// next tick (UTC).
pub(super) fn table(doc: &Value, style: &Style) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = doc["schedules"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|s| {
            let time = |field: &str| {
                s[field]
                    .as_u64()
                    .map_or("-".to_string(), |ms| utc(ms, false))
            };
            vec![
                s["name"].as_str().unwrap_or("").to_string(),
                s["workflow"].as_str().unwrap_or("").to_string(),
                s["cron"].as_str().unwrap_or("").to_string(),
                s["missed"].as_str().unwrap_or("").to_string(),
                if s["paused"].as_bool().unwrap_or(false) {
                    "paused"
                } else {
                    "active"
                }
                .to_string(),
                time("last_tick_ms"),
                time("next_tick_ms"),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no schedules\n".to_string();
    }
    render(
        &[
            "NAME",
            "WORKFLOW",
            "CRON",
            "MISSED",
            "STATE",
            "LAST TICK",
            "NEXT TICK",
        ],
        &rows,
        |_, cell| cell.to_string(),
        style,
    )
}
