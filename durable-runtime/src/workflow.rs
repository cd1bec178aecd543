//! The `Workflow` trait that `#[durable]` implements for a unit struct named like the fn.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Ctx;
use crate::future::BoxFuture;
use crate::manifest::{Manifest, SiteDecl, SiteTypes, shape_of};
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
/// use durable_runtime::manifest::{SiteDecl, SiteKind};
///
/// #[derive(Clone, Copy)]
/// struct Double;
///
/// impl Workflow for Double {
///     type Input = u64;
///     type Output = Result<u64, String>;
///     const NAME: &'static str = "double";
///     const SITES: &'static [SiteDecl] =
///         &[SiteDecl { name: "double", kind: SiteKind::Step, guard: None }];
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
    /// The workflow's version (`#[durable(version = 2)]`), 1 by default.
    /// Several versions of one name can be registered side by side: an
    /// instance runs on the version it started on, and a new instance on
    /// the version of the workflow value passed to `start`.
    const VERSION: u32 = 1;

    /// Every site (step, sleep, wait, patch) of the body, in source order,
    /// with its name and kind, as checked at compile time (one namespace of
    /// names for all kinds).
    const SITES: &'static [SiteDecl];

    /// The types each site of [`SITES`](Self::SITES) reads and writes, in
    /// the same order (`None` for sleeps and patches). `#[durable]`
    /// implements it from the body's types without running anything; a
    /// hand-written workflow may leave the default (no list), and its
    /// checkpoints are then checked only when they are read.
    fn site_types(&self) -> Vec<Option<SiteTypes>> {
        Vec::new()
    }

    /// The workflow's [`Manifest`]: sites, their types, input and output.
    /// The engine builds it once, when the workflow is registered.
    fn manifest(&self) -> Manifest
    where
        Self::Input: 'static,
        Self::Output: 'static,
    {
        Manifest::new(
            Self::NAME,
            Self::VERSION,
            (*shape_of::<Self::Input>()).clone(),
            (*shape_of::<Self::Output>()).clone(),
            Self::SITES,
            self.site_types(),
        )
    }

    /// The whole-workflow deadline of each instance, in milliseconds from
    /// its start (`#[durable(timeout = "3d")]`); `None` for none.
    /// [`StartOptions::deadline`](crate::StartOptions::deadline) overrides it.
    const TIMEOUT_MS: Option<u64> = None;

    /// Whether some step of the body has a compensation (`step!(..,
    /// compensate = ..)`), set by `#[durable]`. A cancel of an instance of
    /// such a workflow lets it compensate its completed steps before it
    /// ends cancelled (see [`Engine::cancel`](crate::Engine::cancel)).
    const COMPENSATES: bool = false;

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

/// Gives a workflow body closure the higher-ranked signature the engine
/// calls it with. Used by `#[durable]`'s expansion.
#[doc(hidden)]
pub fn body_fn<I, O, F>(f: F) -> F
where
    F: for<'a> Fn(&'a Ctx, I) -> BoxFuture<'a, O> + Copy,
{
    f
}

/// The manifest of a workflow (what `#[durable]` declares: sites, their
/// types, input and output), as the engine registers it.
pub fn manifest_of<I: IntoWorkflow>(workflow: I) -> Manifest {
    workflow.into_workflow().manifest()
}
