//! Non-deterministic calls between steps are real compiler warnings (made
//! errors here by `deny`), each at the offending token with the fix.
#![deny(deprecated)]

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use durable::prelude::*;

#[durable]
async fn onboard(ctx: &Ctx, perms: Vec<String>) -> Result<(), String> {
    let started = SystemTime::now();
    let t = Instant::now();
    let region = std::env::var("REGION").unwrap_or_default();
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    let set: HashSet<String> = perms.into_iter().collect();
    for perm in &set {
        step!("grant", grant(perm).await)?;
    }
    // Inside a step body it is fine.
    step!("stamp", Ok::<_, String>(format!("{:?}", SystemTime::now())))?;
    let _ = (ctx, started, t, region);
    Ok(())
}

async fn grant(_perm: &str) -> Result<(), String> {
    Ok(())
}

fn main() {}
