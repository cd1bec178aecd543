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
    let n = rand::random();
    let mut rng = thread_rng();
    let id = uuid::Uuid::new_v4();
    // Inside a step body it is fine.
    step!("stamp", Ok::<_, String>(format!("{:?}", SystemTime::now())))?;
    let _ = (ctx, started, t, region, n, &mut rng, id);
    Ok(())
}

async fn grant(_perm: &str) -> Result<(), String> {
    Ok(())
}

// Stand-ins for the `rand` and `uuid` crates: the warning is by path.
mod rand {
    pub fn random() -> u64 {
        4
    }
    pub fn thread_rng() -> u64 {
        4
    }
}
use rand::thread_rng;
mod uuid {
    pub struct Uuid;
    impl Uuid {
        pub fn new_v4() -> Uuid {
            Uuid
        }
    }
}

fn main() {}
