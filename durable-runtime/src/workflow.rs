//! The `Workflow` trait that `#[durable]` implements for a unit struct named like the fn.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Ctx;
use crate::future::BoxFuture;
use crate::retry::RetryPolicy;

/// A workflow definition: what `#[durable]` turns an `async fn` into.
///
/// The attribute keeps a fn of the same name (so the name is a value that
/// [`Engine`](crate::Engine) methods take, via [`IntoWorkflow`]) and
/// implements this trait for a hidden unit struct. Implementing it by hand is
/// possible: the body then calls [`Ctx::step`] directly, and the type also
/// implements [`IntoWorkflow`] with `type Workflow = Self`:
///
/// ```
/// use durable_runtime::{BoxFuture, Ctx, IntoWorkflow, Workflow};
///
/// #[derive(Clone, Copy)]
/// struct Double;
///
/// impl Workflow for Double {
///     type Input = u64;
///     type Output = Result<u64, String>;
///     const NAME: &'static str = "double";
///     const STEPS: &'static [&'static str] = &["double"];
///     fn run<'a>(self, ctx: &'a Ctx, n: u64) -> BoxFuture<'a, Self::Output> {
///         Box::pin(async move { ctx.step("double", || async { Ok(n * 2) }).await })
///     }
/// }
///
/// impl IntoWorkflow for Double {
///     type Workflow = Self;
///     fn into_workflow(self) -> Self {
///         self
///     }
/// }
/// ```
pub trait Workflow: Copy + Send + Sync + 'static {
    /// The workflow's one input (bundle several values in a struct or tuple).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// What the workflow returns; stored when the instance finishes.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The stable name instances are stored under. Renaming it orphans the
    /// instances stored under the old name.
    const NAME: &'static str;
    /// Every step, sleep and wait name used in the body, in source order,
    /// as checked at compile time (one namespace for all three kinds).
    const STEPS: &'static [&'static str];

    /// The workflow's retry policy for its steps, if it overrides the engine's.
    fn retry_policy(&self) -> Option<RetryPolicy> {
        None
    }

    /// Runs (or replays) the body for one instance.
    fn run<'a>(self, ctx: &'a Ctx, input: Self::Input) -> BoxFuture<'a, Self::Output>;
}

/// Something that names a workflow: the fn a `#[durable]` attribute left in
/// place, or a [`Workflow`] type that implements this trait by hand.
pub trait IntoWorkflow: Copy + Send + Sync + 'static {
    /// The workflow definition.
    type Workflow: Workflow;

    /// Returns the definition.
    fn into_workflow(self) -> Self::Workflow;
}

/// The argument type of the fn `#[durable]` leaves in place; it cannot be
/// built outside this crate, so that fn cannot be called by mistake.
#[doc(hidden)]
#[derive(Debug)]
pub struct WorkflowMarker(());

impl<F, W> IntoWorkflow for F
where
    F: Fn(WorkflowMarker) -> W + Copy + Send + Sync + 'static,
    W: Workflow,
{
    type Workflow = W;

    fn into_workflow(self) -> W {
        self(WorkflowMarker(()))
    }
}
