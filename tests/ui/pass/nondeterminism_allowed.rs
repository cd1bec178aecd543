//! `#[durable(allow = "nondeterminism")]` silences the determinism warnings
//! of one fn; keyed steps over a `HashSet` raise none.
#![deny(warnings)]

use std::collections::HashSet;
use std::time::SystemTime;

use durable::prelude::*;

#[durable(allow = "nondeterminism")]
async fn measured(_ctx: &Ctx, _n: u32) -> Result<u64, String> {
    let at = SystemTime::now();
    step!("work", Ok::<_, String>(()))?;
    Ok(at.elapsed().map(|d| d.as_millis() as u64).unwrap_or(0))
}

#[durable]
async fn keyed(_ctx: &Ctx, perms: HashSet<String>) -> Result<(), String> {
    for perm in &perms {
        step!("grant", key = perm.clone(), Ok::<_, String>(perm.len()))?;
    }
    Ok(())
}

fn main() {
    let _ = (measured, keyed);
}
