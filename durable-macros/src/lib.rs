//! Procedural macros of the [`durable`](https://docs.rs/durable) crate.
//! Depend on `durable`, which re-exports them; this crate's API is not
//! stable on its own.
//!
//! `#[durable]` goes through three phases, one module each:
//! `args` and `ast` read the attribute and the fn (keeping the original
//! tokens, so errors point at what the user wrote), `sites` scans the body
//! for `step!`, `sleep!`, `sleep_until!` and `wait_for!` sites (also inside
//! other macros' arguments), `validate` checks what spans several sites,
//! and `expand` generates the code. Every phase reports to one accumulator,
//! so one build shows every mistake.

mod args;
mod ast;
mod expand;
mod lint;
mod sites;
mod validate;

use proc_macro::TokenStream;

/// Turns an `async fn(ctx: &Ctx, input: T) -> R` into a durable workflow.
///
/// The fn's name stays a value of the same visibility, which the `Engine`
/// takes (through `IntoWorkflow`) to register, start and resume the
/// workflow by a stable name; the body moves into a hidden definition that
/// implements `Workflow`. In the body:
///
/// - `step!(name, body)` is a checkpointed step;
/// - `sleep!(name, duration)` and `sleep_until!(name, system_time)` are
///   durable timers: the deadline is checkpointed the first time, and a
///   long sleep parks the instance (no task, no future) until it comes;
/// - `wait_for!(name)` waits for the event `name` sent to the instance and
///   evaluates to its payload; `wait_for!(name, timeout = duration)` to an
///   `Option` of it.
///
/// ```ignore
/// use durable::prelude::*;
/// use std::time::Duration;
///
/// #[durable]
/// async fn provision(ctx: &Ctx, signup: Signup) -> Result<Receipt, String> {
///     let charge = step!("charge-card", billing::charge(&signup, ctx.idempotency_key()).await)?;
///     let account = step!("create-account", retry = RetryPolicy::no_retry(), accounts::create(&signup).await)?;
///     let verified: Option<Verified> = wait_for!("email-verified", timeout = Duration::from_secs(86400));
///     sleep!("cool-off", Duration::from_secs(3600));
///     Ok(Receipt { account, charge, verified: verified.is_some() })
/// }
/// ```
///
/// # Arguments
///
/// - `name = "..."`: the name instances are stored under; the fn's name by
///   default. Renaming it orphans the instances stored under the old name.
/// - `retry = <expr>`: the `RetryPolicy` of this workflow's steps, instead
///   of the engine's.
/// - `crate = "path"`: where the `durable` crate is, if it was renamed or is
///   re-exported; `::durable` by default.
///
/// # Rules, checked at compile time
///
/// - The fn is an `async fn` with exactly two parameters: the context
///   (`&Ctx`) and one owned input (bundle several values in a struct or a
///   tuple). It has no generic or lifetime parameters and no receiver. The
///   input and output are owned, concrete serde types.
/// - Names are string literals, not empty. Steps, sleeps and waits share one
///   namespace: a name is used once within the workflow, whatever the kind
///   (a site inside a loop is one name with many occurrences). The error is
///   on the second use and names the first one's line and kind.
/// - `wait_for!` takes one option, `timeout = <Duration>`; `step!` one,
///   `retry = <RetryPolicy>`; `sleep!` and `sleep_until!` none.
/// - None of them can be nested inside a step's body (which is run again
///   on retry and skipped on replay), nor inside another site's arguments.
///
/// # Where `step!`, `sleep!` and `wait_for!` work
///
/// Anywhere lexically inside the fn, including inside other macros'
/// arguments (`println!`, `vec!`, a local `macro_rules!`) and async blocks
/// and closures. Each evaluates to its outcome (the step's `Result`, `()`,
/// the payload), except as a whole argument of `join!` / `try_join!` or as
/// the future of a `select!` branch, where it is the future of that
/// outcome, so that joined sites run concurrently:
///
/// ```ignore
/// let (a, b) = tokio::join!(step!("a", f().await), step!("b", g().await));
/// let (a, b) = (a?, b?);
/// let (approval, ()): (Approval, ()) =
///     tokio::join!(wait_for!("approval"), sleep!("at-least", Duration::from_secs(60)));
/// ```
///
/// A nested `fn` item cannot reach the workflow's context, so a site in one
/// is left alone (and is an error); call `ctx.step(..)`, `ctx.sleep(..)`,
/// `ctx.wait_for(..)`... there instead.
///
/// # Equivalent code without `#[durable]`
///
/// ```ignore
/// #[doc(hidden)]
/// #[derive(Clone, Copy)]
/// struct __durable_provision;
///
/// impl ::durable::__private::Workflow for __durable_provision {
///     type Input = Signup;
///     type Output = Result<Receipt, String>;
///     const NAME: &'static str = "provision";
///     // Every name, whatever its kind, in source order.
///     const STEPS: &'static [&'static str] =
///         &["charge-card", "create-account", "email-verified", "cool-off"];
///
///     fn run<'a>(self, __durable_ctx: &'a Ctx, __durable_input: Signup)
///         -> ::durable::__private::BoxFuture<'a, Self::Output>
///     {
///         Box::pin(async move {
///             let ctx: &Ctx = __durable_ctx;
///             let signup: Signup = __durable_input;
///             let __durable_ret: Result<Receipt, String> = {
///                 let charge = ::durable::__private::step(__durable_ctx, "charge-card", None,
///                     || async { billing::charge(&signup, ctx.idempotency_key()).await }).await?;
///                 let account = ::durable::__private::step(__durable_ctx, "create-account",
///                     Some(RetryPolicy::no_retry()),
///                     || async { accounts::create(&signup).await }).await?;
///                 let verified: Option<Verified> = ::durable::__private::wait_for_timeout(
///                     __durable_ctx, "email-verified", Duration::from_secs(86400)).await;
///                 ::durable::__private::sleep(__durable_ctx, "cool-off",
///                     Duration::from_secs(3600)).await;
///                 Ok(Receipt { account, charge, verified: verified.is_some() })
///             };
///             return __durable_ret;
///         })
///     }
/// }
///
/// /// The fn's own docs and attributes.
/// fn provision(_: ::durable::__private::WorkflowMarker) -> __durable_provision {
///     __durable_provision
/// }
/// ```
///
/// (`step!(..)` is really rewritten to `step!(@__durable_expanded (..))`,
/// which the facade's `step!` turns into the call above, so the user's
/// import of `step` is what the rewrite uses; likewise for `sleep!`,
/// `sleep_until!` (`__private::sleep_until`) and `wait_for!`
/// (`__private::wait_for` without a timeout). The `__durable_*` names are
/// hygienic: the body can neither see nor shadow them. With
/// `retry = <expr>` on the attribute, the impl also has
/// `fn retry_policy(&self) -> Option<RetryPolicy> { Some(<expr>) }`.)
#[proc_macro_attribute]
pub fn durable(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::durable(args.into(), item.into()).into()
}
