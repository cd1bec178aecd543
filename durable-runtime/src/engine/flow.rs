//! The flow loop: fires due schedule ticks (`schedules.rs`) and debounces
//! (`debounce.rs`), then sleeps until the next is due on the engine's
//! clock, a change made here rings its bell, or (on a shared store, where
//! other processes change them) the poll interval passes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Core;

impl Core {
    /// Tells the flow loop that a schedule or debounce changed here.
    pub(super) fn ring_flow(&self) {
        let s = &self.scheduler;
        s.flow_rings.fetch_add(1, Ordering::SeqCst);
        s.flow_due.store(0, Ordering::SeqCst);
        s.flow_bell.notify_one();
    }

    /// The flow loop: fires due schedule ticks and debounces, then sleeps
    /// until the next is due on the engine's clock, a change here rings
    /// the bell, or (on a shared store, where other processes change them)
    /// the poll interval passes; until the engine is gone.
    pub(super) async fn flow_loop(core: Weak<Core>, poll: Option<Duration>) {
        loop {
            let (next, clock, bell, failed) = {
                let Some(core) = core.upgrade() else { return };
                let rings = core.scheduler.flow_rings.load(Ordering::SeqCst);
                let now = core.services.clock.now_ms();
                let mut failed = false;
                let a = core.fire_schedules(now).await.unwrap_or_else(|e| {
                    tracing::warn!(durable.error = %e, "firing schedules failed; trying again");
                    failed = true;
                    None
                });
                let b = core.fire_debounces(now).await.unwrap_or_else(|e| {
                    tracing::warn!(durable.error = %e, "firing debounces failed; trying again");
                    failed = true;
                    None
                });
                let next = match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                // A failing round does not hold the test kit's idle check.
                let due = if failed { None } else { next };
                let s = &core.scheduler;
                s.flow_due.store(due.unwrap_or(u64::MAX), Ordering::SeqCst);
                if s.flow_rings.load(Ordering::SeqCst) != rings {
                    s.flow_due.store(0, Ordering::SeqCst); // rung meanwhile
                }
                (
                    next,
                    Arc::clone(&core.services.clock),
                    Arc::clone(&core.scheduler.flow_bell),
                    failed,
                )
            };
            let timer = async {
                match next {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let every = match (poll, failed) {
                (_, true) => Some(Duration::from_secs(1)),
                (p, false) => p,
            };
            let polled = async {
                match every {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = timer => {}
                _ = polled => {}
                _ = bell.notified() => {}
            }
        }
    }
}
