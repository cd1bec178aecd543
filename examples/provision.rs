//! Five-step user provisioning that survives a crash.
//!
//! `cargo run --example provision` runs the whole story: it starts a child
//! process that provisions `user-42` and is killed (`abort`) in the middle of
//! the `assign-team` step, then resumes the same instance: the card is not
//! charged again, the account is not created again, and `assign-team` runs
//! again because it had not finished.
//!
//! Flags: `--db PATH` (store directory; default: a fresh one under the
//! system temp dir), `--id ID` (instance id, default `user-42`),
//! `--crash-at STEP` (run once and abort inside that step's body).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use durable::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Signup {
    email: String,
    plan: String,
    card: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    account_id: u64,
    team: String,
    permissions: Vec<String>,
}

/// Aborts the process inside step `name` when `--crash-at name` was given.
fn maybe_crash(name: &str) {
    if std::env::args()
        .skip_while(|a| a != "--crash-at")
        .nth(1)
        .as_deref()
        == Some(name)
    {
        println!("    !! crashing inside {name} (abort: no cleanup, no flush)");
        std::process::abort();
    }
}

/// Set by every step body that runs; a step whose body did not run was
/// replayed from its checkpoint.
static RAN: AtomicBool = AtomicBool::new(false);

fn body(name: &str, detail: impl std::fmt::Display) {
    RAN.store(true, Ordering::SeqCst);
    println!("    running {name}: {detail}");
    maybe_crash(name);
}

/// Prints a finished step's value and whether its body ran or was replayed.
fn done(name: &str, value: impl std::fmt::Debug) {
    let how = if RAN.swap(false, Ordering::SeqCst) {
        "ran"
    } else {
        "replayed from checkpoint"
    };
    println!("  {name:<16} -> {value:?} ({how})");
}

mod billing {
    pub async fn charge(card: &str, plan: &str, key: &str) -> Result<String, String> {
        super::body(
            "charge-card",
            format_args!("charging {card} for {plan} (idempotency key {key})"),
        );
        Ok(format!("ch_{:x}", key.len() * 7919))
    }
}

mod accounts {
    pub async fn create(email: &str, charge: &str) -> Result<u64, String> {
        super::body(
            "create-account",
            format_args!("creating account for {email} (paid by {charge})"),
        );
        Ok(1000 + email.len() as u64)
    }

    pub async fn assign_team(account: u64) -> Result<String, String> {
        super::body(
            "assign-team",
            format_args!("assigning account {account} to a team"),
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Ok("platform".into())
    }

    pub async fn grant(account: u64, permission: &str) -> Result<String, String> {
        super::body(
            "seed-permission",
            format_args!("granting {permission} to account {account}"),
        );
        Ok(permission.to_string())
    }
}

mod mail {
    pub async fn welcome(email: &str) -> Result<(), String> {
        super::body("send-welcome", format_args!("mailing {email}"));
        Ok(())
    }
}

#[durable]
async fn provision(ctx: &Ctx, signup: Signup) -> Result<Receipt, String> {
    let charge_id = step!(
        "charge-card",
        billing::charge(&signup.card, &signup.plan, &ctx.idempotency_key()).await
    )?;
    done("charge-card", &charge_id);
    let account_id = step!(
        "create-account",
        accounts::create(&signup.email, &charge_id).await
    )?;
    done("create-account", account_id);
    let team = step!("assign-team", accounts::assign_team(account_id).await)?;
    done("assign-team", &team);
    let mut permissions = Vec::new();
    for permission in ["read", "write", "invite"] {
        permissions.push(step!(
            "seed-permission",
            accounts::grant(account_id, permission).await
        )?);
        done("seed-permission", permission);
    }
    step!("send-welcome", mail::welcome(&signup.email).await)?;
    done("send-welcome", "sent");
    Ok(Receipt {
        charge_id,
        account_id,
        team,
        permissions,
    })
}

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let id = flag("--id").unwrap_or_else(|| "user-42".into());
    let db = match flag("--db") {
        Some(db) => PathBuf::from(db),
        None if flag("--crash-at").is_some() => {
            return Err("--crash-at needs --db so the next run can resume".into());
        }
        None => {
            // The whole story: a crashing child, then the resume here.
            let db = std::env::temp_dir().join(format!("durable-provision-{}", std::process::id()));
            println!("== run 1: a child process provisions {id} and crashes inside assign-team");
            let status = Command::new(std::env::current_exe()?)
                .args([
                    "--db",
                    &db.to_string_lossy(),
                    "--id",
                    &id,
                    "--crash-at",
                    "assign-team",
                ])
                .status()?;
            println!("== run 1 ended: {status}\n");
            println!("== run 2: reopen the store; {id} resumes at its first unfinished step");
            let receipt = run(&db, &id).await;
            let _ = std::fs::remove_dir_all(&db);
            println!("== {id} provisioned: {:?}", receipt?);
            return Ok(());
        }
    };
    let receipt = run(&db, &id).await?;
    println!("== {id} provisioned: {receipt:?}");
    Ok(())
}

async fn run(db: &std::path::Path, id: &str) -> Result<Result<Receipt, String>, durable::Error> {
    let engine = Engine::builder()
        .path(db)
        .register(provision)
        .open()
        .await?;
    let signup = Signup {
        email: "ada@example.com".into(),
        plan: "team".into(),
        card: "tok_visa".into(),
    };
    let handle = engine.start(provision, id, signup).await?;
    let receipt = handle.result().await?;
    let history = engine.history(id).await?;
    println!(
        "  history of {id}: {:?}, {} step occurrences",
        history.status,
        history.steps.len()
    );
    for step in &history.steps {
        println!(
            "    {:<16} #{} attempts={} {:?}",
            step.name, step.occurrence, step.attempts, step.outcome
        );
    }
    engine.shutdown().await;
    Ok(receipt)
}
