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
/// - `version = N`: the workflow's version (1 by default). Register several
///   versions of one name side by side; an instance runs on the version it
///   started on.
/// - `timeout = "3d"`: a whole-workflow deadline for each instance, a
///   number and a unit (`ms`, `s`, `m`, `h`, `d`), checked at compile time:
///   an instance not finished that long after its start is cancelled (see
///   `StartOptions::deadline`, which overrides it for one start).
/// - `allow = "nondeterminism"`: no determinism warnings for this fn (the
///   macro warns at `SystemTime::now()`, `Instant::now()`, `rand::..`,
///   `std::env::var`, `tokio::time::sleep`, `Uuid::new_v4()` outside step
///   bodies, and at unkeyed steps in loops over a `HashMap`/`HashSet`).
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
/// - `wait_for!` takes one option, `timeout = <Duration>`; `step!` three,
///   `key = <serde value>`, `retry = <RetryPolicy>` and `timeout =
///   <Duration>` (each attempt's time limit on the engine's clock: an
///   attempt past it is a failed attempt, retried per the policy, and its
///   body's future is dropped; a literal such as `30` or `"30s"` is refused);
///   `sleep!` and `sleep_until!` none.
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
///     // Every site, whatever its kind, in source order (the manifest's skeleton).
///     const SITES: &'static [SiteDecl] = &[
///         SiteDecl { name: "charge-card", kind: SiteKind::Step, guard: None },
///         SiteDecl { name: "create-account", kind: SiteKind::Step, guard: None },
///         SiteDecl { name: "email-verified", kind: SiteKind::Wait, guard: None },
///         SiteDecl { name: "cool-off", kind: SiteKind::Sleep, guard: None },
///     ];
///
///     fn run<'a>(self, __durable_ctx: &'a Ctx, __durable_input: Signup)
///         -> ::durable::__private::BoxFuture<'a, Self::Output>
///     {
///         (Self::__durable_parts().0)(__durable_ctx, __durable_input)
///     }
///
///     // The types of each site, learned from the body without running it.
///     fn site_types(&self) -> Vec<Option<SiteTypes>> {
///         Self::__durable_parts().1.iter().map(|f| f()).collect()
///     }
/// }
///
/// impl __durable_provision {
///     // The body as a closure, and one fn per site giving the site's types:
///     // each step and wait passes a `PhantomData` whose type the compiler
///     // infers from the body, and the array reads the types back.
///     fn __durable_parts() -> (impl for<'a> Fn(&'a Ctx, Signup) -> BoxFuture<'a, Result<Receipt, String>> + Copy,
///                              [fn() -> Option<SiteTypes>; 4]) {
///         let __durable_site_0 = PhantomData; // charge-card
///         let __durable_site_1 = PhantomData; // create-account
///         let __durable_site_2 = PhantomData; // email-verified
///         let __durable_body = ::durable::__private::body_fn(move |__durable_ctx, __durable_input| {
///             Box::pin(async move {
///                 let ctx: &Ctx = __durable_ctx;
///                 let signup: Signup = __durable_input;
///                 let __durable_ret: Result<Receipt, String> = {
///                     let charge = ::durable::__private::step_site(__durable_ctx, __durable_site_0,
///                         "charge-card", None::<&()>, None, None,
///                         || async { billing::charge(&signup, ctx.idempotency_key()).await }).await?;
///                     let account = ::durable::__private::step_site(__durable_ctx, __durable_site_1,
///                         "create-account", None::<&()>, Some(RetryPolicy::no_retry()), None,
///                         || async { accounts::create(&signup).await }).await?;
///                     let verified: Option<Verified> = ::durable::__private::wait_for_timeout_site(
///                         __durable_ctx, __durable_site_2, "email-verified",
///                         Duration::from_secs(86400)).await;
///                     ::durable::__private::sleep(__durable_ctx, "cool-off",
///                         Duration::from_secs(3600)).await;
///                     Ok(Receipt { account, charge, verified: verified.is_some() })
///                 };
///                 return __durable_ret;
///             })
///         });
///         (__durable_body, [
///             (&step_probe(__durable_site_0)).site_types(),
///             (&step_probe(__durable_site_1)).site_types(),
///             (&wait_probe(__durable_site_2)).site_types(),
///             sleep_site_types(),
///         ])
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
/// `fn retry_policy(&self) -> Option<RetryPolicy> { Some(<expr>) }`; with
/// `version = N`, `const VERSION: u32 = N;`. `step!(name, key = k, ..)`
/// passes `Some(&k)` as the key. Determinism warnings, if any, are a
/// `#[deprecated]` item used at each offending token, in a fn beside
/// `__durable_parts`.)
#[proc_macro_attribute]
pub fn durable(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::durable(args.into(), item.into()).into()
}
