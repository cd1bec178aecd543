//! How the command line prints: tables with coloured statuses, timelines,
//! UTC times and ages.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Colours on or off.
pub(super) struct Style {
    on: bool,
}

impl Style {
    pub(super) fn new(on: bool) -> Style {
        Style { on }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub(super) fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    pub(super) fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    /// A status kind in its colour.
    fn status(&self, kind: &str) -> String {
        let code = match kind {
            "completed" => "32",
            "failed" | "incompatible" => "31",
            "blocked" => "33",
            "needs-attention" => "35",
            "running" => "34",
            "sleeping" => "36",
            "waiting" => "95",
            "paused" => "93",
            _ => "2",
        };
        self.paint(code, kind)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Days since 1970-01-01 as (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-30 19:04:19Z` (with milliseconds when `millis`).
pub(super) fn utc(ms: u64, millis: bool) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if millis {
        format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:03}Z",
            ms % 1000
        )
    } else {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
    }
}

/// Reads `2026-11-30`, `2026-11-30T10:00`, `2026-11-30T10:00:05Z` (UTC,
/// `T` or a space) as milliseconds since the epoch.
pub(super) fn parse_utc(text: &str) -> Option<u64> {
    let text = text.trim().trim_end_matches('Z');
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if let Some(time) = time {
        let mut t = time.splitn(3, ':');
        let h: i64 = t.next()?.parse().ok()?;
        let mi: i64 = t.next()?.parse().ok()?;
        let s: f64 = t.next().map_or(Some(0.0), |s| s.parse().ok())?;
        if h > 23 || mi > 59 || !(0.0..61.0).contains(&s) {
            return None;
        }
        secs += h * 3600 + mi * 60;
        return u64::try_from(secs)
            .ok()
            .map(|x| x * 1000 + (s * 1000.0) as u64);
    }
    u64::try_from(secs).ok().map(|x| x * 1000)
}

/// `850ms`, `2.5s`, `3.0m`, `4.2h`, `3.0d`.
pub(super) fn duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms as f64 / 1000.0;
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let m = s / 60.0;
    if m < 60.0 {
        return format!("{m:.1}m");
    }
    let h = m / 60.0;
    if h < 48.0 {
        return format!("{h:.1}h");
    }
    format!("{:.1}d", h / 24.0)
}

fn age(ms: Option<u64>) -> String {
    ms.map_or_else(String::new, |ms| duration(now_ms().saturating_sub(ms)))
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// What a status says beyond its kind.
fn status_detail(status: &Value) -> String {
    if let Some(reason) = status["reason"].as_str() {
        return reason.to_string();
    }
    match status["kind"].as_str().unwrap_or_default() {
        "waiting" => {
            let mut s = format!("event {:?}", status["event"].as_str().unwrap_or_default());
            if let Some(until) = status["until_ms"].as_u64() {
                let _ = write!(s, " until {}", utc(until, false));
            }
            s
        }
        "sleeping" => format!(
            "until {}",
            status["until_ms"]
                .as_u64()
                .map_or_else(String::new, |t| utc(t, false))
        ),
        "completed" if status["is_err"] == Value::Bool(true) => "returned Err".into(),
        "paused" => status["since_ms"]
            .as_u64()
            .map_or_else(String::new, |t| format!("since {}", utc(t, false))),
        "running" => status["steps"]
            .as_array()
            .filter(|s| !s.is_empty())
            .map(|steps| {
                let names: Vec<String> = steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{} (attempt {})",
                            s["name"].as_str().unwrap_or_default(),
                            s["attempt"]
                        )
                    })
                    .collect();
                format!("in {}", names.join(", "))
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Rows as aligned columns; `colour[i]` paints column i's cells after padding.
pub(super) fn table(
    header: &[&str],
    rows: &[Vec<String>],
    paint: impl Fn(usize, &str) -> String,
    style: &Style,
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        let last = cells.len() - 1;
        for (i, cell) in cells.into_iter().enumerate() {
            l.push_str(&cell);
            if i < last {
                l.push_str("  ");
            }
        }
        l.trim_end().to_string()
    };
    out.push_str(
        &style.bold(&line(
            header
                .iter()
                .enumerate()
                .map(|(i, h)| format!("{h:<w$}", w = widths[i]))
                .collect(),
        )),
    );
    out.push('\n');
    for row in rows {
        let cells = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = widths[i].saturating_sub(cell.chars().count());
                format!("{}{}", paint(i, cell), " ".repeat(pad))
            })
            .collect();
        out.push_str(&line(cells));
        out.push('\n');
    }
    out
}

/// The `list` table.
pub(super) fn list(instances: &[Value], style: &Style) -> String {
    if instances.is_empty() {
        return "no instances\n".into();
    }
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                i["id"].as_str().unwrap_or_default().to_string(),
                i["workflow"].as_str().unwrap_or_default().to_string(),
                i["status"]["kind"].as_str().unwrap_or_default().to_string(),
                truncate(&status_detail(&i["status"]), 60),
                age(i["created_at_ms"].as_u64()),
                age(i["updated_at_ms"].as_u64()),
            ]
        })
        .collect();
    table(
        &["ID", "WORKFLOW", "STATUS", "DETAIL", "AGE", "UPDATED"],
        &rows,
        |col, cell| {
            if col == 2 {
                style.status(cell)
            } else {
                cell.to_string()
            }
        },
        style,
    )
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn value_of(doc: &Value, field: &str) -> Option<String> {
    if let Some(v) = doc.get(field) {
        return Some(compact(v));
    }
    doc.get(format!("{field}_error"))
        .and_then(Value::as_str)
        .map(|e| format!("(cannot show: {e})"))
}

/// The `show` page.
pub(super) fn show(doc: &Value, style: &Style) -> String {
    let mut out = String::new();
    let kind = doc["status"]["kind"].as_str().unwrap_or_default();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{}  {value}", style.bold(&format!("{name:<13}")));
    };
    field(
        "Instance",
        doc["id"].as_str().unwrap_or_default().to_string(),
    );
    field(
        "Workflow",
        format!(
            "{} (version {})",
            doc["workflow"].as_str().unwrap_or_default(),
            doc["version"]
        ),
    );
    let detail = status_detail(&doc["status"]);
    field(
        "Status",
        if detail.is_empty() {
            style.status(kind)
        } else if matches!(
            kind,
            "failed" | "blocked" | "needs-attention" | "incompatible"
        ) {
            format!("{}  {}", style.status(kind), style.red(&detail))
        } else {
            format!("{}  {detail}", style.status(kind))
        },
    );
    let current = &doc["current"];
    if current.is_object() {
        let mut s = format!(
            "{} ({}, {})",
            current["name"].as_str().unwrap_or_default(),
            current["kind"].as_str().unwrap_or_default(),
            current["outcome"].as_str().unwrap_or_default()
        );
        if let Some(until) = current["until_ms"].as_u64() {
            let label = if current["kind"] == "sleep" {
                "wakes at"
            } else {
                "times out at"
            };
            let _ = write!(s, ", {label} {}", utc(until, false));
        }
        field("Current step", s);
        if let Some(attempts) = current["attempts"].as_u64() {
            field("Attempts", attempts.to_string());
        }
        if let Some(e) = current["last_error"].as_str() {
            field("Last error", style.red(e));
            field(
                "Next retry",
                "by the step's retry policy, while the service runs it".into(),
            );
        }
        if current["kind"] == "wait" {
            field(
                "Awaits event",
                format!("{:?}", current["name"].as_str().unwrap_or_default()),
            );
        }
    } else {
        field("Current step", "—".into());
    }
    field(
        "Created",
        doc["created_at_ms"].as_u64().map_or_else(String::new, |t| {
            format!("{} ({} ago)", utc(t, false), age(Some(t)))
        }),
    );
    field(
        "Updated",
        doc["updated_at_ms"].as_u64().map_or_else(String::new, |t| {
            format!("{} ({} ago)", utc(t, false), age(Some(t)))
        }),
    );
    if let Some(r) = doc["recoveries"].as_u64().filter(|r| *r > 0) {
        field("Recoveries", format!("{r} resumes without progress"));
    }
    if let Some(v) = value_of(doc, "input") {
        field("Input", truncate(&v, 200));
    }
    if let Some(v) = value_of(doc, "output") {
        field("Output", truncate(&v, 200));
    }
    let steps = doc["steps"].as_array().map_or(0, Vec::len);
    field(
        "Steps",
        format!(
            "{steps} (see `durable history {}`)",
            doc["id"].as_str().unwrap_or_default()
        ),
    );
    out
}

/// The `history` timeline.
pub(super) fn history(doc: &Value, style: &Style) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} ({})  {}",
        style.bold("Instance"),
        doc["id"].as_str().unwrap_or_default(),
        doc["workflow"].as_str().unwrap_or_default(),
        style.status(doc["status"]["kind"].as_str().unwrap_or_default())
    );
    if let Some(v) = value_of(doc, "input") {
        let _ = writeln!(out, "{} {}", style.bold("Input"), truncate(&v, 200));
    }
    let created = doc["created_at_ms"].as_u64().unwrap_or(0);
    let steps = doc["steps"].as_array().cloned().unwrap_or_default();
    out.push('\n');
    if steps.is_empty() {
        out.push_str("no steps yet\n");
    } else {
        let rows: Vec<Vec<String>> = steps
            .iter()
            .map(|s| {
                let start = s["started_at_ms"].as_u64().unwrap_or(0);
                let name = match (s["key"].as_str(), s["occurrence"].as_u64()) {
                    (Some(k), _) => format!("{}[{k}]", s["name"].as_str().unwrap_or_default()),
                    (None, Some(n)) if n > 0 => {
                        format!("{}#{n}", s["name"].as_str().unwrap_or_default())
                    }
                    _ => s["name"].as_str().unwrap_or_default().to_string(),
                };
                let dur = match s["finished_at_ms"].as_u64() {
                    Some(end) => duration(end.saturating_sub(start)),
                    None => match s["until_ms"].as_u64() {
                        Some(until) => format!("until {}", utc(until, false)),
                        None => "…".into(),
                    },
                };
                let value = if let Some(v) = s.get("value") {
                    compact(v)
                } else if let Some(e) = s.get("error") {
                    format!("Err {}", compact(e))
                } else if let Some(p) = s.get("payload") {
                    compact(p)
                } else if let Some(e) = s["error_text"].as_str().or(s["last_error"].as_str()) {
                    e.to_string()
                } else if let Some(e) = s["value_error"].as_str().or(s["payload_error"].as_str()) {
                    format!("(cannot show: {e})")
                } else {
                    String::new()
                };
                vec![
                    name,
                    s["kind"].as_str().unwrap_or_default().to_string(),
                    format!("+{}", duration(start.saturating_sub(created))),
                    dur,
                    s["attempts"].to_string(),
                    s["outcome"].as_str().unwrap_or_default().to_string(),
                    truncate(&value, 80),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "STEP", "KIND", "START", "DURATION", "ATTEMPTS", "OUTCOME", "VALUE",
            ],
            &rows,
            |col, cell| match (col, cell) {
                (5, "ok" | "received") => style.green(cell),
                (5, "error" | "panicked" | "too-large" | "timed-out") => style.red(cell),
                (5, _) => style.status(match cell {
                    "retrying" => "blocked",
                    "sleeping" => "sleeping",
                    "waiting" => "waiting",
                    "running" => "running",
                    other => other,
                }),
                _ => cell.to_string(),
            },
            style,
        ));
    }
    let _ = writeln!(out, "\n{}", style.bold("Transitions"));
    for t in doc["transitions"].as_array().into_iter().flatten() {
        let at = t["at_ms"].as_u64().unwrap_or(0);
        let _ = write!(
            out,
            "  {}  {}",
            utc(at, true),
            t["kind"].as_str().unwrap_or_default()
        );
        if let Some(by) = t["by"].as_str() {
            let _ = write!(out, " by {by}");
        }
        if let Some(e) = t["error"].as_str() {
            let _ = write!(out, ": {}", style.red(e));
        }
        out.push('\n');
    }
    let events = doc["events"].as_array().cloned().unwrap_or_default();
    if !events.is_empty() {
        let _ = writeln!(out, "\n{}", style.bold("Events"));
        for e in events {
            let payload = value_of(&e, "payload").unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}  {}#{}  {}",
                utc(e["sent_at_ms"].as_u64().unwrap_or(0), true),
                e["name"].as_str().unwrap_or_default(),
                e["seq"],
                truncate(&payload, 100)
            );
        }
    }
    if let Some(v) = value_of(doc, "output") {
        let _ = writeln!(out, "\n{} {}", style.bold("Output"), truncate(&v, 200));
    }
    out
}

/// The `queues` table: one row per queue; a limit not set is `-`, one
/// the target does not know (declared in another process's code) is `?`.
pub(super) fn queues(doc: &Value, style: &Style) -> String {
    let rows: Vec<Vec<String>> = doc["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            let known = q["declared"].as_bool().unwrap_or(false)
                || !q["concurrency"].is_null()
                || !q["partition_concurrency"].is_null()
                || !q["per_worker"].is_null()
                || !q["rate"].is_null();
            let limit = |v: &Value| match v.as_u64() {
                Some(n) => n.to_string(),
                None if known => "-".into(),
                None => "?".into(),
            };
            let rate = match (q["rate"]["n"].as_u64(), q["rate"]["period_ms"].as_u64()) {
                (Some(n), Some(ms)) => format!("{n}/{}", duration_text(ms)),
                _ if known => "-".into(),
                _ => "?".into(),
            };
            vec![
                q["name"].as_str().unwrap_or_default().to_string(),
                q["pending"].as_u64().unwrap_or(0).to_string(),
                q["running"].as_u64().unwrap_or(0).to_string(),
                limit(&q["concurrency"]),
                limit(&q["partition_concurrency"]),
                limit(&q["per_worker"]),
                rate,
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no queues\n".into();
    }
    table(
        &[
            "QUEUE",
            "PENDING",
            "RUNNING",
            "CONCURRENCY",
            "PER-PARTITION",
            "PER-WORKER",
            "RATE",
        ],
        &rows,
        |_, cell| cell.to_string(),
        style,
    )
}

/// A period in ms as text: `500ms`, `30s`, `5m`, `2h`.
fn duration_text(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The `stats` tables.
pub(super) fn stats(stats: &Value, style: &Style) -> String {
    let mut out = String::new();
    let by_status = &stats["by_status"];
    let kinds: Vec<&str> = crate::STATUS_KINDS
        .iter()
        .map(|k| crate::status_name(*k))
        .collect();
    let rows: Vec<Vec<String>> = kinds
        .iter()
        .map(|k| {
            vec![
                (*k).to_string(),
                by_status[*k].as_u64().unwrap_or(0).to_string(),
            ]
        })
        .chain(std::iter::once(vec![
            "total".into(),
            stats["total"].as_u64().unwrap_or(0).to_string(),
        ]))
        .collect();
    out.push_str(&table(
        &["STATUS", "COUNT"],
        &rows,
        |col, cell| {
            if col == 0 {
                style.status(cell)
            } else {
                cell.to_string()
            }
        },
        style,
    ));
    if let Some(by_workflow) = stats["by_workflow"].as_object().filter(|m| !m.is_empty()) {
        out.push('\n');
        let mut header = vec!["WORKFLOW", "TOTAL"];
        header.extend(kinds.iter());
        let rows: Vec<Vec<String>> = by_workflow
            .iter()
            .map(|(name, counts)| {
                let mut row = vec![
                    name.clone(),
                    counts["total"].as_u64().unwrap_or(0).to_string(),
                ];
                row.extend(
                    kinds
                        .iter()
                        .map(|k| counts[*k].as_u64().unwrap_or(0).to_string()),
                );
                row
            })
            .collect();
        out.push_str(&table(&header, &rows, |_, c| c.to_string(), style));
    }
    out
}

/// The deploy gate's report.
pub(super) fn check(report: &Value, style: &Style) -> String {
    let mut out = String::new();
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    for f in &findings {
        match f["instance"].as_str() {
            Some(id) => {
                let _ = writeln!(
                    out,
                    "{} instance {id} ({}): {}",
                    style.red("✘"),
                    f["workflow"].as_str().unwrap_or_default(),
                    f["reason"].as_str().unwrap_or_default()
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{} workflow {}: {}",
                    style.status("blocked").replace("blocked", "!"),
                    f["workflow"].as_str().unwrap_or_default(),
                    f["reason"].as_str().unwrap_or_default()
                );
            }
        }
    }
    let stranded = findings
        .iter()
        .filter(|f| f["instance"].is_string())
        .count();
    if stranded == 0 {
        let _ = writeln!(
            out,
            "{} every unfinished instance can run on this build",
            style.green("ok:")
        );
    } else {
        let _ = writeln!(
            out,
            "{} {stranded} unfinished instance(s) cannot run on this build",
            style.red("not ok:")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(utc(0, false), "1970-01-01 00:00:00Z");
        let t = parse_utc("2026-11-30T19:04:19Z").unwrap();
        assert_eq!(utc(t, false), "2026-11-30 19:04:19Z");
        assert_eq!(
            parse_utc("2024-02-29").map(|t| utc(t, false)).as_deref(),
            Some("2024-02-29 00:00:00Z")
        );
        assert_eq!(utc(t + 5, true), "2026-11-30 19:04:19.005Z");
        assert!(parse_utc("2026-13-01").is_none());
        assert!(parse_utc("yesterday").is_none());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(2500), "2.5s");
        assert_eq!(duration(90_000), "1.5m");
        assert_eq!(duration(3 * 86_400_000), "3.0d");
    }
}
