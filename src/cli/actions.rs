//! The bulk actions (cancel, resume, retry, pause, unpause) and purge:
//! confirmed on a terminal, or with `--yes`.

use std::io::{IsTerminal, Write};

use super::format::{self, Style};
use super::target::Target;
use super::{
    BulkArgs, Cli, CliError, PurgeArgs, Res, enc, list_query, parse_age, parse_time, print_json,
};

/// Purge: one bulk deletion, confirmed on a terminal or with `--yes`.
pub(super) fn purge(cli: &Cli, target: &Target, args: &PurgeArgs) -> Res<u8> {
    let (body, what) = match (&args.finished_before, &args.older_than) {
        (Some(time), None) => {
            let ms = parse_time(time, "--finished-before")?;
            (
                serde_json::json!({"finished_before_ms": ms}),
                format!("before {}", format::utc(ms, false)),
            )
        }
        (None, Some(age)) => {
            let ms = parse_age(age).ok_or_else(|| {
                CliError::usage(format!(
                    "--older-than {age:?}: give an age (90s, 15m, 2h, 30d, 1w)"
                ))
            })?;
            (
                serde_json::json!({"older_than_ms": ms}),
                format!("more than {age} ago"),
            )
        }
        _ => {
            return Err(CliError::usage(
                "purge needs --finished-before TIME or --older-than AGE (one of them)",
            ));
        }
    };
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(format!(
                "purge deletes every instance finished {what}: confirm with --yes (no terminal to ask)"
            )));
        }
        eprint!("delete every instance finished {what}, with its history? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing done");
            return Ok(1);
        }
    }
    let answer = target.call(true, "/purge", "", body.to_string().as_bytes())?;
    if cli.json {
        print_json(&answer);
    } else {
        let n = answer["purged"].as_u64().unwrap_or(0);
        println!(
            "purged {n} instance{} finished {what}",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(0)
}

/// Cancel, resume, retry, pause or unpause: one id, several, or every
/// instance passing a filter (a bulk action asks for confirmation, or needs
/// `--yes`).
pub(super) fn bulk(
    cli: &Cli,
    style: &Style,
    target: &Target,
    action: &str,
    args: &BulkArgs,
) -> Res<u8> {
    let mut ids = args.ids.clone();
    let filtered = !args.status.is_empty() || args.workflow.is_some();
    if filtered {
        let mut after: Option<String> = None;
        loop {
            let query = list_query(
                &args.status,
                args.workflow.as_deref(),
                None,
                None,
                1000,
                after.as_deref(),
            )?;
            let page = target.call(false, "/instances", &query, b"")?;
            for i in page["instances"].as_array().into_iter().flatten() {
                if let Some(id) = i["id"].as_str()
                    && !ids.iter().any(|x| x == id)
                {
                    ids.push(id.to_string());
                }
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
    }
    if ids.is_empty() {
        if filtered {
            println!("no instance passes the filter; nothing to {action}");
            return Ok(0);
        }
        return Err(CliError::usage(format!(
            "{action}: give instance ids, or --status/--workflow for every instance passing them"
        )));
    }
    if args.dry_run {
        for id in &ids {
            println!("would {action} {id}");
        }
        return Ok(0);
    }
    if ids.len() > 1 && !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(format!(
                "{action} {} instances: confirm with --yes (no terminal to ask)",
                ids.len()
            )));
        }
        eprint!(
            "{action} {} instances ({})? [y/N] ",
            ids.len(),
            preview(&ids)
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing done");
            return Ok(1);
        }
    }
    let mut failed = 0;
    let mut results = Vec::new();
    let total = ids.len();
    for (n, id) in ids.iter().enumerate() {
        let outcome = target.call(true, &format!("/instances/{}/{action}", enc(id)), "", b"");
        let progress = if total > 1 {
            format!("[{}/{total}] ", n + 1)
        } else {
            String::new()
        };
        match outcome {
            Ok(_) => {
                results.push(serde_json::json!({"id": id, "ok": true}));
                if !cli.json {
                    let done = match action {
                        "cancel" => "cancelled",
                        "resume" => "resumed",
                        "retry" => "retried",
                        "pause" => "paused",
                        _ => "unpaused",
                    };
                    println!("{progress}{} {id}", style.green(done));
                }
            }
            Err(e) => {
                failed += 1;
                results.push(serde_json::json!({"id": id, "ok": false, "error": e.message}));
                if !cli.json {
                    eprintln!("{progress}{} {id}: {}", style.red("failed"), e.message);
                }
            }
        }
    }
    if cli.json {
        print_json(&serde_json::json!({"action": action, "results": results}));
    }
    if failed > 0 {
        if total == 1 && !cli.json {
            // The message was printed; the exit code says it failed.
        }
        Ok(1)
    } else {
        Ok(0)
    }
}

fn preview(ids: &[String]) -> String {
    let mut shown: Vec<&str> = ids.iter().take(3).map(String::as_str).collect();
    if ids.len() > 3 {
        shown.push("…");
    }
    shown.join(", ")
}
