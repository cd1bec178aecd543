//! Generated code names std items by absolute paths: decoys named like the
//! prelude's types and variants, and user bindings named like the macro's
//! hidden ones, change nothing.

#![allow(dead_code, non_camel_case_types)]

use durable::prelude::*;

struct Result;
struct Option;
struct Some;
struct None;
struct Box;
struct Clone;
struct Copy;
struct Debug;
struct Default;
struct Ok;
struct Err;
struct Future;
struct Pin;
struct Send;
mod core {}
mod std {}

#[durable]
async fn decoys(ctx: &Ctx, input: u32) -> ::core::result::Result<u32, ::std::string::String> {
    let __durable_ctx = "not the context";
    let __durable_input = 7u8;
    let __durable_ret = ();
    let step = 1;
    let first = step!(
        "first",
        ::core::result::Result::<u32, ::std::string::String>::Ok(input + step)
    )?;
    let _ = (__durable_ctx, __durable_input, __durable_ret, ctx.id());
    ::core::result::Result::Ok(first)
}

fn main() {
    let _ = decoys;
}
