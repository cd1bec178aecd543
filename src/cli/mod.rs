//! The `durable` command-line tool (feature `cli`): `cargo install durable
//! --features cli`. It reaches a running service through its admin
//! endpoint (`--url`, see [`admin`](crate::admin)), opens an embedded
//! store that no process holds (`--store`), or opens a PostgreSQL schema
//! (`--postgres URL [--schema NAME]`, with the feature `postgres` too),
//! without running or resuming anything: the engine it opens registers no
//! workflow, so it claims no instance and the only writes are the ones a
//! command asks for. Every target answers through the same admin API.
//!
//! ```text
//! durable --store ./durable.db list --status blocked
//! durable --url http://127.0.0.1:7070/admin --token $TOKEN resume order-17
//! durable --store ./durable.db retry order-17            # from its failed step
//! durable --store ./durable.db fork order-17 --from-step charge
//! durable --store ./durable.db pause order-17            # then: unpause order-17
//! durable --store ./durable.db purge --older-than 30d --yes
//! durable --postgres postgres://app@db/app queues         # pending, running, limits
//! durable --postgres postgres://app@db/app --schema durable list
//! ```
//!
//! Exit codes: `0` success; `1` an error (no such instance, an action
//! refused, an action the store's backend does not support, a deploy gate
//! with findings, a store or connection failure, a declined confirmation);
//! `2` a usage error (bad arguments, no target, a bulk action or a purge
//! without `--yes` when no terminal can confirm it).

mod actions;
mod format;
mod schedules;
mod target;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use self::actions::{bulk, purge};
use self::format::Style;
use self::target::Target;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "durable",
    version,
    about = "Inspect and operate durable workflow instances",
    after_help = "Exit codes: 0 ok, 1 error (including a deploy gate with findings), 2 usage.\n\
                  Targets: --url (a running service's admin endpoint), --store (an embedded store no process holds)\n\
                  or --postgres (a PostgreSQL database; builds with the feature `postgres`)."
)]
pub struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    /// Print JSON (complete, never truncated) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// When to colour the output (`auto`: on a terminal unless NO_COLOR is set).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// An embedded store's directory, opened directly (no process may hold it).
    #[arg(long, env = "DURABLE_STORE", global = true)]
    store: Option<PathBuf>,
    /// A running service's admin endpoint, e.g. http://127.0.0.1:7070/admin.
    #[arg(long, env = "DURABLE_URL", global = true)]
    url: Option<String>,
    /// The admin endpoint's bearer token (needed for actions through --url).
    #[arg(long, env = "DURABLE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A PostgreSQL database, e.g. postgres://app@db.internal/app (builds with
    /// the feature `postgres`); nothing is claimed or run from it.
    #[arg(
        long,
        env = "DURABLE_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    postgres: Option<String>,
    /// The PostgreSQL schema the instances live in (with --postgres).
    #[arg(long, env = "DURABLE_SCHEMA", global = true, default_value = "durable")]
    schema: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List instances, newest first.
    List(ListArgs),
    /// One instance: status, where it stands, input and output.
    Show {
        /// The instance id.
        id: String,
    },
    /// One instance's timeline: every step with start, duration, attempts, outcome, value.
    History {
        /// The instance id.
        id: String,
    },
    /// Cancel instances (by id, or every instance passing --status/--workflow).
    Cancel(BulkArgs),
    /// Resume blocked, needs-attention or incompatible instances (through --url: the service runs them).
    Resume(BulkArgs),
    /// Send an event; the payload is checked against the wait's type.
    SendEvent {
        /// The instance id.
        id: String,
        /// The event's name (the `wait_for!` name).
        name: String,
        /// The payload as JSON, `@FILE` to read it from a file, or `-` for stdin.
        payload: String,
    },
    /// The deploy gate: unfinished instances the new code cannot run.
    Check {
        /// The new build's manifests (its snapshot file, e.g. tests/manifests.txt);
        /// needed with --store. Through --url the service checks its own build.
        #[arg(long)]
        manifests: Option<PathBuf>,
    },
    /// Counts of instances by status and by workflow.
    Stats,
    /// Every cron schedule: workflow, expression, policy, paused, last and next tick.
    Schedules,
    /// Every queue: pending and running instances, and its limits.
    Queues,
    /// Run failed, blocked or needs-attention instances again from their
    /// failed step (the steps before it replay; through --url the service runs them).
    Retry(BulkArgs),
    /// Fork an instance from a step into a new instance (prints the new id):
    /// the steps before the step replay, the rest runs for real.
    Fork {
        /// The instance id.
        id: String,
        /// The step to run again from (its first occurrence).
        #[arg(long)]
        from_step: String,
        /// The new instance's id (default: the first free ID-fork-N).
        #[arg(long)]
        new_id: Option<String>,
    },
    /// Pause instances: no new step starts until they are unpaused.
    Pause(BulkArgs),
    /// Unpause paused instances: they go on where they stood.
    Unpause(BulkArgs),
    /// Delete finished (completed, failed, cancelled) instances that finished
    /// before a time; prints how many.
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
struct PurgeArgs {
    /// Finished before this time: a UTC time (2026-11-30T10:00:00Z), milliseconds
    /// since the epoch, or an age (30d).
    #[arg(
        long,
        conflicts_with = "older_than",
        required_unless_present = "older_than"
    )]
    finished_before: Option<String>,
    /// Finished longer ago than this age (90s, 15m, 2h, 30d, 1w), by the target's clock.
    #[arg(long)]
    older_than: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only these statuses (repeatable or comma-separated): running, sleeping,
    /// waiting, blocked, needs-attention, incompatible, completed, failed, cancelled.
    #[arg(long, value_delimiter = ',')]
    status: Vec<String>,
    /// Only instances of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Only instances enqueued on this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only instances created at or after this time or age (`1h`, `2d`,
    /// `2026-11-30T10:00:00Z`, milliseconds since the epoch).
    #[arg(long)]
    since: Option<String>,
    /// Only instances created before this time or age.
    #[arg(long)]
    until: Option<String>,
    /// At most this many instances per page.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Continue after this cursor (printed when more instances follow).
    #[arg(long)]
    after: Option<String>,
    /// Every page, not only the first.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct BulkArgs {
    /// Instance ids.
    ids: Vec<String>,
    /// Every instance with this status (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    status: Vec<String>,
    /// Every instance of this workflow (with --status, both must hold).
    #[arg(long)]
    workflow: Option<String>,
    /// Do not ask for confirmation of a bulk action.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Print what would be done, do nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A failure, with its exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
        }
    }

    fn error(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

type Res<T> = Result<T, CliError>;

/// Runs the command line with the process's arguments; the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let style = Style::new(match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    });
    match run(&cli, &style) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("{}: {}", style.red("error"), e.message);
            ExitCode::from(e.code)
        }
    }
}

fn run(cli: &Cli, style: &Style) -> Res<u8> {
    // Usage problems in the arguments come before opening anything.
    if let Command::SendEvent { payload, .. } = &cli.command {
        read_payload(payload)?;
    }
    let target = Target::open(&cli.target)?;
    let result = command(cli, style, &target);
    target.close();
    result
}

fn read_payload(arg: &str) -> Res<Value> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::usage(format!("reading the payload from stdin: {e}")))?;
        s
    } else if let Some(file) = arg.strip_prefix('@') {
        std::fs::read_to_string(file)
            .map_err(|e| CliError::usage(format!("reading the payload from {file}: {e}")))?
    } else {
        arg.to_string()
    };
    serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "the payload is not JSON ({e}); quote it for the shell: '{{\"approved\": true}}'"
        ))
    })
}

fn enc(s: &str) -> String {
    crate::admin::percent_encode(s)
}

fn list_query(
    statuses: &[String],
    workflow: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    limit: usize,
    after: Option<&str>,
) -> Res<String> {
    let mut q = Vec::new();
    for s in statuses {
        if crate::parse_status(s).is_none() {
            return Err(CliError::usage(format!(
                "--status {s:?}: not a status (running, sleeping, waiting, blocked, needs-attention, \
                 incompatible, completed, failed, cancelled)"
            )));
        }
        q.push(format!("status={}", enc(s)));
    }
    if let Some(w) = workflow {
        q.push(format!("workflow={}", enc(w)));
    }
    if let Some(t) = since {
        q.push(format!("since_ms={}", parse_time(t, "--since")?));
    }
    if let Some(t) = until {
        q.push(format!("until_ms={}", parse_time(t, "--until")?));
    }
    q.push(format!("limit={}", limit.clamp(1, 1000)));
    if let Some(a) = after {
        q.push(format!("after={}", enc(a)));
    }
    Ok(q.join("&"))
}

/// A time as milliseconds since the epoch: an age (`90s`, `15m`, `2h`,
/// `3d`, `1w`), milliseconds, or a UTC date and time
/// (`2026-11-30`, `2026-11-30T10:00`, `2026-11-30T10:00:05Z`).
fn parse_time(text: &str, flag: &str) -> Res<u64> {
    let bad = || {
        CliError::usage(format!(
            "{flag} {text:?}: give an age (90s, 15m, 2h, 3d, 1w), a UTC time (2026-11-30T10:00:00Z) \
             or milliseconds since the epoch"
        ))
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if let Some(age) = parse_age(text) {
        return Ok(now.saturating_sub(age));
    }
    if text.len() > 10 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    format::parse_utc(text).ok_or_else(bad)
}

/// An age (`90s`, `15m`, `2h`, `3d`, `1w`) in milliseconds.
fn parse_age(text: &str) -> Option<u64> {
    let unit = text.chars().last().filter(|c| c.is_ascii_alphabetic())?;
    let n: u64 = text[..text.len() - 1].parse().ok()?;
    let secs: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    Some(n.saturating_mul(secs * 1000))
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn command(cli: &Cli, style: &Style, target: &Target) -> Res<u8> {
    match &cli.command {
        Command::List(args) => {
            let mut after = args.after.clone();
            let mut all = Vec::new();
            let mut next;
            loop {
                let mut query = list_query(
                    &args.status,
                    args.workflow.as_deref(),
                    args.since.as_deref(),
                    args.until.as_deref(),
                    args.limit,
                    after.as_deref(),
                )?;
                if let Some(queue) = &args.queue {
                    query.push_str(&format!("&queue={}", enc(queue)));
                }
                let page = target.call(false, "/instances", &query, b"")?;
                all.extend(page["instances"].as_array().cloned().unwrap_or_default());
                next = page["next"].as_str().map(str::to_string);
                if !args.all || next.is_none() {
                    break;
                }
                after = next.clone();
            }
            if cli.json {
                print_json(&serde_json::json!({"instances": all, "next": next}));
            } else {
                print!("{}", format::list(&all, style));
                if let Some(next) = next {
                    eprintln!("more instances follow: add --after {next} (or --all)");
                }
            }
            Ok(0)
        }
        Command::Show { id } | Command::History { id } => {
            let doc = target.call(false, &format!("/instances/{}", enc(id)), "", b"")?;
            if cli.json {
                print_json(&doc);
            } else if matches!(cli.command, Command::Show { .. }) {
                print!("{}", format::show(&doc, style));
            } else {
                print!("{}", format::history(&doc, style));
            }
            Ok(0)
        }
        Command::Cancel(args) => bulk(cli, style, target, "cancel", args),
        Command::Resume(args) => bulk(cli, style, target, "resume", args),
        Command::SendEvent { id, name, payload } => {
            let payload = read_payload(payload)?;
            let body = serde_json::to_vec(&payload).unwrap_or_default();
            let answer = target.call(
                true,
                &format!("/instances/{}/events/{}", enc(id), enc(name)),
                "",
                &body,
            )?;
            if cli.json {
                print_json(&answer);
            } else {
                println!("sent event {name:?} to {id}");
            }
            Ok(0)
        }
        Command::Check { manifests } => {
            let report = match (manifests, target.engine()) {
                (Some(path), Some(engine)) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        CliError::usage(format!("cannot read {}: {e}", path.display()))
                    })?;
                    let mut parsed = Vec::new();
                    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
                        parsed.push(
                            crate::manifest::Manifest::from_text(block.trim_matches('\n'))
                                .ok_or_else(|| {
                                    CliError::usage(format!(
                                        "{} holds a block that is not a manifest:\n{block}",
                                        path.display()
                                    ))
                                })?,
                        );
                    }
                    let found = target
                        .block_on(engine.compatibility_with(&parsed))
                        .expect("a local engine has a runtime")
                        .map_err(|e| CliError::error(e.to_string()))?;
                    crate::admin::check_json(&found)
                }
                (None, None) => target.call(false, "/check", "", b"")?,
                (Some(_), None) => {
                    return Err(CliError::usage(
                        "--manifests is for --store; through --url the service checks the build it runs",
                    ));
                }
                (None, Some(_)) => {
                    return Err(CliError::usage(
                        "check with --store needs --manifests FILE: the new build's manifests \
                         (the snapshot file its tests keep, e.g. tests/manifests.txt)",
                    ));
                }
            };
            if cli.json {
                print_json(&report);
            } else {
                print!("{}", format::check(&report, style));
            }
            Ok(if report["ok"].as_bool() == Some(true) {
                0
            } else {
                1
            })
        }
        Command::Queues => {
            let queues = target.call(false, "/queues", "", b"")?;
            if cli.json {
                print_json(&queues);
            } else {
                print!("{}", format::queues(&queues, style));
            }
            Ok(0)
        }
        Command::Stats => {
            let stats = target.call(false, "/stats", "", b"")?;
            if cli.json {
                print_json(&stats);
            } else {
                print!("{}", format::stats(&stats, style));
            }
            Ok(0)
        }
        Command::Schedules => {
            let doc = target.call(false, "/schedules", "", b"")?;
            if cli.json {
                print_json(&doc);
            } else {
                print!("{}", schedules::table(&doc, style));
            }
            Ok(0)
        }
        Command::Retry(args) => bulk(cli, style, target, "retry", args),
        Command::Pause(args) => bulk(cli, style, target, "pause", args),
        Command::Unpause(args) => bulk(cli, style, target, "unpause", args),
        Command::Fork {
            id,
            from_step,
            new_id,
        } => {
            let body = serde_json::json!({"from_step": from_step, "new_id": new_id});
            let answer = target.call(
                true,
                &format!("/instances/{}/fork", enc(id)),
                "",
                body.to_string().as_bytes(),
            )?;
            if cli.json {
                print_json(&answer);
            } else {
                // The new id alone on stdout, for `NEW=$(durable fork ..)`.
                println!("{}", answer["new_id"].as_str().unwrap_or_default());
                eprintln!("forked {id} from step {from_step:?}");
            }
            Ok(0)
        }
        Command::Purge(args) => purge(cli, target, args),
    }
}
