//! (facade docs are written later)
#![deny(missing_docs)]

pub use durable_macros::durable;
pub use durable_runtime::*;

#[doc(hidden)]
pub use durable_runtime::__private;

/// Runs one checkpointed step of a `#[durable]` workflow.
///
/// `step!(name, body)` or `step!(name, retry = policy, body)`. Only valid
/// inside a `#[durable]` async fn, which rewrites each use; anywhere else it is
/// a compile error.
#[macro_export]
macro_rules! step {
    (@__durable_expanded $($expanded:tt)*) => { $($expanded)* };
    ($($args:tt)*) => {
        ::core::compile_error!("`step!` can only be used inside a `#[durable]` async fn")
    };
}

/// Everything a workflow author needs: `use durable::prelude::*;`.
pub mod prelude {
    pub use crate::step;
    pub use durable_macros::durable;
    pub use durable_runtime::{Ctx, Engine, Error, RetryPolicy, permanent};
}
