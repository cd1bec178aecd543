//! The workflow's name stays a fn, not a unit struct: a binding or a
//! parameter with the same name (in the workflow itself or anywhere in the
//! module) is an ordinary binding, not a pattern against the workflow.

#![deny(warnings)]

use durable::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Order {
    items: Vec<u32>,
}

#[durable]
async fn order(_ctx: &Ctx, order: Order) -> Result<usize, String> {
    let count = step!("count", Ok::<usize, String>(order.items.len()))?;
    Ok(count)
}

#[durable]
async fn keys(ctx: &Ctx, _n: u32) -> Result<Vec<String>, String> {
    let mut keys = vec![ctx.id().to_string()];
    keys.push(step!("key", Ok::<String, String>(ctx.idempotency_key()))?);
    Ok(keys)
}

fn uses_the_names(order: u32, keys: &str) -> usize {
    let order = order as usize;
    order + keys.len()
}

fn main() {
    assert_eq!(uses_the_names(1, "ab"), 3);
    let _ = (order, keys);
}
