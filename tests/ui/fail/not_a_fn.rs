use durable::prelude::*;

#[durable]
struct Provision;

fn main() {}
