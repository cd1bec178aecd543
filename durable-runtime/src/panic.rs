//! Catching panics of step bodies and workflow code.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// One attempt of a body: calling it and polling its future, with any panic
/// caught and turned into `Err`.
pub(crate) struct CatchUnwind<Fut> {
    fut: Option<Pin<Box<Fut>>>,
    panic: Option<Box<dyn Any + Send>>,
}

impl<Fut: Future> CatchUnwind<Fut> {
    pub(crate) fn new<F: Fn() -> Fut>(body: &F) -> Self {
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(fut) => CatchUnwind {
                fut: Some(Box::pin(fut)),
                panic: None,
            },
            Err(panic) => CatchUnwind {
                fut: None,
                panic: Some(panic),
            },
        }
    }
}

impl<Fut: Future> Future for CatchUnwind<Fut> {
    type Output = Result<Fut::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(Err(this
                .panic
                .take()
                .unwrap_or_else(|| Box::new("polled after completion"))));
        };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                this.fut = None;
                Poll::Ready(Ok(v))
            }
            Err(panic) => {
                this.fut = None;
                Poll::Ready(Err(panic))
            }
        }
    }
}
