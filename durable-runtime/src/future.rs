//! [`BoxFuture`], a leaf so that the context and the workflow trait need not
//! import each other.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future borrowing the instance's [`Ctx`](crate::Ctx).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
