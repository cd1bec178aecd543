//! Less common shapes of `step!`: in `try_join!` and `select!` (where it is
//! a future, so the steps run concurrently), in a local `macro_rules!`, with
//! brackets or braces, a trailing comma, a block body, a `retry` inside a
//! join, a workflow defined inside a workflow, and bodies that always return
//! early or never return.

#![deny(warnings)]

use durable::prelude::*;

async fn f(n: u32) -> Result<u32, String> {
    Ok(n)
}

#[durable]
async fn shapes(ctx: &Ctx, n: u32) -> Result<u32, String> {
    let (a, b) = tokio::try_join!(
        step!("try-join-a", f(n).await),
        step!(
            "try-join-b",
            retry = RetryPolicy::no_retry(),
            f(n + 1).await
        ),
    )?;
    let c = tokio::select! {
        c = step!("select", f(a).await) => c?,
        else => 0,
    };
    macro_rules! twice {
        ($x:expr) => {
            step!("in-local-macro", f($x * 2).await)
        };
    }
    let d = twice!(b)?;
    let e = step!["brackets", f(c).await,]?;
    let g = step! {"braces", {
        let base = f(d).await?;
        Ok::<u32, String>(base + e)
    }}?;
    let _ = ctx.id();
    // A workflow defined inside another is left to its own attribute.
    #[durable]
    async fn inner(_ctx: &Ctx, n: u32) -> Result<u32, String> {
        step!("inner-only", f(n).await)
    }
    let _ = inner;
    return Ok(g);
}

#[durable]
async fn always_returns(_ctx: &Ctx, n: u32) -> Result<u32, String> {
    #![allow(clippy::needless_return)]
    let value = step!("only", f(n).await)?;
    return Ok(value);
}

#[durable]
async fn diverges(_ctx: &Ctx, _n: u32) -> Result<u32, String> {
    loop {
        step!("forever", f(1).await)?;
    }
}

fn main() {
    use durable::{IntoWorkflow, Workflow};
    fn steps<I: IntoWorkflow>(_: I) -> Vec<&'static str> {
        <I::Workflow as Workflow>::SITES.iter().map(|s| s.name).collect()
    }
    assert_eq!(
        steps(shapes),
        [
            "try-join-a",
            "try-join-b",
            "select",
            "in-local-macro",
            "brackets",
            "braces"
        ]
    );
    let _ = (always_returns, diverges);
}
