//! The clock seam: every timestamp, deadline and timer of the engine reads
//! time through a [`Clock`]. The system clock is the default
//! ([`SystemClock`]); a [`ManualClock`] moves only when told to, so a test
//! can pass a three-day `sleep!` in microseconds.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use durable_runtime::time::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
//! assert_eq!(clock.now_ms(), 1_000_000);
//! clock.advance(Duration::from_secs(3 * 24 * 3600));
//! assert_eq!(clock.now_ms(), 1_000_000 + 3 * 24 * 3600 * 1000);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::future::BoxFuture;

/// A source of time for the engine: what "now" is, and a way to wait for a
/// moment. Deadlines are milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch, now.
    fn now_ms(&self) -> u64;

    /// Resolves once [`now_ms`](Clock::now_ms) has reached `deadline_ms`.
    /// It may resolve late, never early: callers look at the clock again.
    fn sleep_until(&self, deadline_ms: u64) -> BoxFuture<'static, ()>;
}

/// The operating system's clock, with tokio's timers. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// How long a [`SystemClock`] timer sleeps before it reads the clock again,
/// so that a clock that jumps forward is noticed.
const RECHECK: Duration = Duration::from_secs(60);

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        to_ms(SystemTime::now())
    }

    fn sleep_until(&self, deadline_ms: u64) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let now = SystemClock.now_ms();
                if now >= deadline_ms {
                    return;
                }
                let left = Duration::from_millis(deadline_ms - now).min(RECHECK);
                tokio::time::sleep(left).await;
            }
        })
    }
}

/// A clock that stands still until [`advance`](ManualClock::advance) or
/// [`set`](ManualClock::set) moves it; every timer whose deadline it passes
/// fires then. Clones share one time.
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<u64>>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

impl ManualClock {
    /// A clock that reads `start` until it is moved.
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock {
            now: Arc::new(watch::Sender::new(to_ms(start))),
        }
    }

    /// Moves the clock forward by `by` and fires the timers it passes.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now.send_modify(|now| *now = now.saturating_add(by));
    }

    /// Sets the clock to `at` (forward or backward).
    pub fn set(&self, at: SystemTime) {
        self.now.send_replace(to_ms(at));
    }

    /// The time the clock reads.
    pub fn now(&self) -> SystemTime {
        from_ms(self.now_ms())
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline_ms: u64) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            loop {
                if *rx.borrow_and_update() >= deadline_ms {
                    return;
                }
                if rx.changed().await.is_err() {
                    // Every handle of the clock is gone: time stands still.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

/// Milliseconds since the Unix epoch of `t` (0 before the epoch).
pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds in `d`, saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_timer_fires_when_the_clock_passes_it() {
        let clock = ManualClock::new(UNIX_EPOCH);
        let timer = tokio::spawn(clock.sleep_until(3_600_000));
        tokio::task::yield_now().await;
        assert!(!timer.is_finished());
        clock.advance(Duration::from_secs(3_599));
        tokio::task::yield_now().await;
        assert!(!timer.is_finished());
        clock.advance(Duration::from_secs(1));
        timer.await.expect("timer fires");
    }
}
