//! Mistakes in the evolution options are compile errors at the token.
use durable::prelude::*;

#[durable(version = 0, allow = "everything")]
async fn onboard(_ctx: &Ctx, perms: Vec<String>) -> Result<(), String> {
    for perm in &perms {
        step!("grant", key = perm.clone(), key = 2, Ok::<_, String>(()))?;
    }
    if patched!("") {
        step!("new", Ok::<_, String>(()))?;
    }
    if patched!("with-extra", 5) {}
    Ok(())
}

fn main() {}
