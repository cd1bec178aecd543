//! The full shape: serde types, a loop, `if`/`match`, a nested block,
//! `tokio::join!`, `println!` holding a step, an async block and a closure
//! holding steps, `retry =` on a step and on the workflow, `name =`.

use durable::prelude::*;
use durable::{IntoWorkflow, Workflow};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Signup {
    email: String,
    admin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    account: u64,
    charge: String,
    extras: Vec<String>,
}

mod billing {
    pub async fn charge(_signup: &super::Signup, key: String) -> Result<String, String> {
        Ok(format!("ch-{key}"))
    }
}

mod accounts {
    pub async fn create(_signup: &super::Signup, _charge: &str) -> Result<u64, String> {
        Ok(42)
    }
}

mod perms {
    pub async fn grant(_account: &u64, perm: &str) -> Result<String, String> {
        Ok(perm.to_string())
    }
}

fn default_permissions() -> Vec<String> {
    vec!["read".into(), "write".into()]
}

async fn f() -> Result<u32, String> {
    Ok(1)
}

async fn g() -> Result<String, String> {
    Ok("g".into())
}

/// Provisions a user: the doc comment goes on the workflow value.
#[durable(name = "user-provisioning", retry = RetryPolicy::default().max_attempts(5))]
async fn provision(ctx: &Ctx, signup: Signup) -> Result<Receipt, String> {
    let charge = step!(
        "charge-card",
        billing::charge(&signup, ctx.idempotency_key()).await
    )?;
    let account = step!(
        "create-account",
        retry = RetryPolicy::no_retry(),
        accounts::create(&signup, &charge).await
    )?;
    let mut extras = Vec::new();
    for perm in default_permissions() {
        extras.push(step!(
            "grant-permission",
            perms::grant(&account, &perm).await
        )?);
    }
    if signup.admin {
        step!("grant-admin", perms::grant(&account, "admin").await)?;
    } else {
        match signup.email.len() {
            0 => return Err("no email".into()),
            _ => {
                let nested = {
                    let inner = step!("nested-block", f().await)?;
                    inner + 1
                };
                extras.push(nested.to_string());
            }
        }
    }
    let (a, b) = tokio::join!(step!("x", f().await), step!("y", g().await));
    extras.push(format!("{}{}", a?, b?));
    println!("{:?}", step!("printed", f().await));
    let later = async { step!("in-async-block", g().await) };
    extras.push(later.await?);
    let make = |n: u32| async move { step!("in-closure", Ok::<u32, String>(n)) };
    extras.push(make(3).await?.to_string());
    durable::step!("qualified", g().await)?;
    Ok(Receipt {
        account,
        charge,
        extras,
    })
}

/// The workflow's name is what the engine takes, with its input and output
/// types inferred from it.
#[allow(dead_code)]
async fn engine_takes_the_name(engine: &Engine, signup: Signup) -> Result<Receipt, String> {
    let handle = engine.start(provision, "user-42", signup.clone()).await;
    let _ = handle.map(|handle| handle.id().to_string());
    match engine.run(provision, format!("user-{}", 43), signup).await {
        Ok(receipt) => receipt,
        Err(error) => Err(error.to_string()),
    }
}

fn main() {
    fn definition<I: IntoWorkflow>(workflow: I) -> I::Workflow {
        workflow.into_workflow()
    }
    fn name<W: Workflow>(_: W) -> &'static str {
        W::NAME
    }
    fn steps<W: Workflow>(_: W) -> Vec<&'static str> {
        W::SITES.iter().map(|s| s.name).collect()
    }
    let workflow = definition(provision);
    assert_eq!(name(workflow), "user-provisioning");
    assert_eq!(
        steps(workflow),
        [
            "charge-card",
            "create-account",
            "grant-permission",
            "grant-admin",
            "nested-block",
            "x",
            "y",
            "printed",
            "in-async-block",
            "in-closure",
            "qualified",
        ]
    );
    assert_eq!(
        workflow.retry_policy(),
        Some(RetryPolicy::default().max_attempts(5))
    );
}
