//! The `Workflow` trait that `#[durable]` implements for a unit struct named like the fn.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Ctx;
use crate::retry::RetryPolicy;

/// A boxed, sendable future borrowing the instance's [`Ctx`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A workflow definition: what `#[durable]` turns an `async fn` into.
///
/// The attribute generates a unit struct named like the fn and implements this
/// trait for it, so the fn's name is a value that [`Engine`](crate::Engine)
/// methods take. Implementing it by hand is possible (the body then calls
/// [`Ctx::step`] directly), but the attribute also checks step names at
/// compile time.
pub trait Workflow: Copy + Send + Sync + 'static {
    /// The workflow's one input (bundle several values in a struct or tuple).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// What the workflow returns; stored when the instance finishes.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The stable name instances are stored under. Renaming it orphans the
    /// instances stored under the old name.
    const NAME: &'static str;
    /// Every step name used in the body, in source order, as checked at
    /// compile time.
    const STEPS: &'static [&'static str];

    /// The workflow's retry policy for its steps, if it overrides the engine's.
    fn retry_policy(&self) -> Option<RetryPolicy> {
        None
    }

    /// Runs (or replays) the body for one instance.
    fn run<'a>(self, ctx: &'a Ctx, input: Self::Input) -> BoxFuture<'a, Self::Output>;
}
