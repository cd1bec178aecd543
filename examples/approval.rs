//! A human approval gate: the workflow drafts a request, waits (durably, for
//! up to three days) for a manager's decision, then provisions or notifies,
//! cools off, and sends tips.
//!
//! ```sh
//! cargo run --example approval -- --start req-7        # starts it; it parks at the wait
//! cargo run --example approval -- --approve req-7      # another run sends the event
//! cargo run --example approval -- --reject req-8
//! cargo run --example approval -- --status req-7
//! ```
//! Each run opens the same store (`--db PATH`, default `approval.db` in the
//! system temp dir), resumes what is due, prints what happened and exits once
//! nothing is due in the next few seconds: after `--approve` that is once
//! the instance has completed (the approval, the two-second cool-off and
//! the tips all run in that process). `--status` only reads: it opens the
//! store with no workflow registered, so it never runs or resumes anything. The waiting instance costs no
//! memory and no task between runs: it lives in the store. With no flags the
//! example runs the whole story in one process.

use std::path::PathBuf;
use std::time::Duration;

use durable::Status;
use durable::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    who: String,
    what: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Approval {
    approved: bool,
    by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Outcome {
    Done,
    Rejected,
    TimedOut,
}

async fn say(line: String) -> Result<(), String> {
    println!("    {line}");
    Ok(())
}

#[durable]
async fn onboarding(ctx: &Ctx, req: Request) -> Result<Outcome, String> {
    step!(
        "create-draft",
        say(format!(
            "[{}] drafted a request for {} by {}",
            ctx.id(),
            req.what,
            req.who
        ))
        .await
    )?;
    let approval: Option<Approval> =
        wait_for!("manager-approval", timeout = Duration::from_secs(3 * 86400));
    match approval {
        Some(a) if a.approved => {
            step!(
                "provision",
                say(format!(
                    "[{}] approved by {}: provisioning {}",
                    ctx.id(),
                    a.by,
                    req.what
                ))
                .await
            )?;
        }
        Some(a) => {
            step!(
                "notify-rejected",
                say(format!(
                    "[{}] rejected by {}: telling {}",
                    ctx.id(),
                    a.by,
                    req.who
                ))
                .await
            )?;
            return Ok(Outcome::Rejected);
        }
        None => {
            step!(
                "notify-timeout",
                say(format!("[{}] nobody decided in 3 days", ctx.id())).await
            )?;
            return Ok(Outcome::TimedOut);
        }
    }
    sleep!("cool-off", Duration::from_secs(2));
    step!(
        "send-tips",
        say(format!("[{}] sent tips to {}", ctx.id(), req.who)).await
    )?;
    Ok(Outcome::Done)
}

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = flag("--db")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("approval.db"));
    let inspecting = flag("--status");
    let builder = Engine::builder().path(&db);
    // Inspecting must never run anything: with no workflow registered the
    // engine resumes nothing (it only reads).
    let builder = if inspecting.is_some() {
        builder
    } else {
        builder.register(onboarding)
    };
    let engine = builder.open().await?;
    let report = engine.recovery();
    if report.resumed + report.parked > 0 {
        println!(
            "opened {}: {} instance(s) resumed, {} parked",
            db.display(),
            report.resumed,
            report.parked
        );
    }
    if let Some(id) = flag("--start") {
        let req = Request {
            who: "ada".into(),
            what: "a laptop".into(),
        };
        // The handle is not needed: the instance runs (and parks) either way.
        drop(engine.start(onboarding, &id, req).await?);
        println!("started {id}");
    } else if let Some(id) = flag("--approve").or(flag("--reject")) {
        let approved = flag("--approve").is_some();
        engine
            .send_event(
                &id,
                "manager-approval",
                Approval {
                    approved,
                    by: "grace".into(),
                },
            )
            .await?;
        println!(
            "sent {} to {id}",
            if approved {
                "an approval"
            } else {
                "a rejection"
            }
        );
    } else if let Some(id) = inspecting {
        println!("{id}: {:?}", engine.status(&id).await?);
        for step in engine.history(&id).await?.steps {
            println!(
                "    {:<18} #{} {:?}",
                step.name, step.occurrence, step.outcome
            );
        }
        engine.shutdown().await;
        return Ok(());
    } else {
        return demo(engine).await;
    }
    settle(
        &engine,
        flag("--start").or(flag("--approve")).or(flag("--reject")),
    )
    .await;
    engine.shutdown().await;
    Ok(())
}

/// Lets whatever is due now run, then reports where the instance stands:
/// returns once it has finished, or waits for an event nobody sent, or
/// sleeps for longer than a few seconds (it resumes in a later run).
async fn settle(engine: &Engine, id: Option<String>) {
    let Some(id) = id else { return };
    // After `--approve`, the stored event wakes the instance: its wait
    // shows until it has been claimed, so it is waited out here.
    let sent = flag("--approve").or(flag("--reject")).is_some();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let soon = |until: std::time::SystemTime| {
            until
                .duration_since(std::time::SystemTime::now())
                .map_or(true, |d| d < Duration::from_secs(5))
        };
        match engine.status(&id).await {
            Ok(Status::Running { .. }) => {}
            Ok(Status::Sleeping { until }) if soon(until) => {}
            Ok(Status::Waiting { .. }) if sent => {}
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{id} is now {:?}",
        engine.status(&id).await.map_err(|e| e.to_string())
    );
}

/// The whole story in one process: start, park, approve, cool off, finish.
async fn demo(engine: Engine) -> Result<(), Box<dyn std::error::Error>> {
    let id = format!("req-{}", std::process::id());
    let req = Request {
        who: "ada".into(),
        what: "a laptop".into(),
    };
    let handle = engine.start(onboarding, &id, req).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("{id}: {:?}", engine.status(&id).await?);
    println!("(a manager approves; the event is durable before send_event returns)");
    engine
        .send_event(
            &id,
            "manager-approval",
            Approval {
                approved: true,
                by: "grace".into(),
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("{id}: {:?}", engine.status(&id).await?);
    println!("{id} finished: {:?}", handle.result().await?);
    engine.shutdown().await;
    Ok(())
}
