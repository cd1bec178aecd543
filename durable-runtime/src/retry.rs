//! Retry policy and backoff for failed step attempts.

use std::time::Duration;

/// How a failed step attempt is retried: exponential backoff with jitter.
///
/// The delay before attempt `n + 1` is `initial * multiplier^(n - 1)`, capped
/// at `max_delay`, then multiplied by a random factor in `[1 - jitter, 1]`.
/// A step stops being retried after `max_attempts` attempts, or at once when
/// its error was marked with [`permanent`](crate::permanent).
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(5)
///     .initial_delay(Duration::from_millis(50))
///     .max_delay(Duration::from_secs(10));
/// assert_eq!(policy.attempts(), 5);
/// assert_eq!(RetryPolicy::no_retry().attempts(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for RetryPolicy {
    /// Three attempts, 100 ms then 200 ms apart (minus up to 20 % jitter).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// One attempt: a failure is final at once.
    pub fn no_retry() -> Self {
        RetryPolicy::default().max_attempts(1)
    }

    /// Total attempts including the first; values below 1 count as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Delay before the second attempt.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Upper bound of any one delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Growth factor between delays; values below 1 count as 1.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Fraction of each delay that is randomised away, clamped to `[0, 1]`.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Total attempts this policy allows.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay after failed attempt number `attempt` (1-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() {
            return self.max_delay;
        }
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delay after failed attempt `attempt`, with jitter from `random`
    /// (a value in `[0, 1)`).
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let base = self.base_delay(attempt);
        let factor = 1.0 - self.jitter * random.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

/// A small, seedless source of jitter: not for cryptography.
pub(crate) fn jitter_random() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn extreme_delays_never_panic() {
        let huge = RetryPolicy::default()
            .initial_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .multiplier(1e300);
        for attempt in [1, 2, 64, u32::MAX] {
            for random in [0.0, 0.5, 0.999] {
                assert!(huge.delay(attempt, random) <= Duration::MAX);
            }
            assert_eq!(huge.base_delay(attempt), Duration::MAX);
        }
        let capped = RetryPolicy::default()
            .initial_delay(Duration::from_secs(1))
            .max_delay(Duration::MAX);
        assert_eq!(capped.base_delay(3), Duration::from_secs(4));
        assert_eq!(
            capped.base_delay(u32::MAX),
            Duration::try_from_secs_f64(2f64.powi(64)).unwrap_or(Duration::MAX)
        );
    }

    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default()
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50));
        assert_eq!(p.base_delay(1), Duration::from_millis(10));
        assert_eq!(p.base_delay(2), Duration::from_millis(20));
        assert_eq!(p.base_delay(3), Duration::from_millis(40));
        assert_eq!(p.base_delay(4), Duration::from_millis(50));
        assert_eq!(p.base_delay(u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn jitter_only_shortens() {
        let p = RetryPolicy::default().jitter(0.5);
        let base = p.base_delay(2);
        for _ in 0..100 {
            let d = p.delay(2, jitter_random());
            assert!(d <= base && d >= base / 2, "{d:?} vs {base:?}");
        }
    }
}
