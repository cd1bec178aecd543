//! Queues as declared in code: a queue's name and limits ([`Queue`]), where
//! an instance goes in it ([`EnqueueOptions`]), and what
//! [`Engine::queues`](crate::Engine::queues) reports ([`QueueInfo`]). The
//! engine dispatches (`engine/queues.rs`); the backends decide under the
//! queue's lock.

use std::time::{Duration, SystemTime};

use crate::error::{Error, Result, UsageError};
use crate::records::QueueEntry;

/// The longest queue name, in bytes.
const MAX_QUEUE_NAME: usize = 200;

/// A named queue, declared with [`EngineBuilder::queue`](crate::EngineBuilder::queue).
/// Every limit is off unless set.
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::Queue;
///
/// let emails = Queue::new("emails")
///     .concurrency(10)            // across every worker of the store
///     .partition_concurrency(2)   // per partition key (per tenant)
///     .per_worker(4)              // in this process
///     .rate_limit(100, Duration::from_secs(60));
/// # let _ = emails;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub(crate) name: String,
    pub(crate) concurrency: Option<u32>,
    pub(crate) partition_concurrency: Option<u32>,
    pub(crate) per_worker: Option<u32>,
    pub(crate) rate: Option<(u32, Duration)>,
}

/// The queue as the backend sees it.
pub(crate) type QueueSpec = Queue;

impl Queue {
    /// A queue named `name`, with no limits.
    pub fn new(name: impl Into<String>) -> Queue {
        Queue {
            name: name.into(),
            concurrency: None,
            partition_concurrency: None,
            per_worker: None,
            rate: None,
        }
    }

    /// At most `n` of its instances dispatched and unfinished at once,
    /// across every worker of the store.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// At most `n` dispatched and unfinished at once per partition key
    /// ([`EnqueueOptions::partition`]); instances without a key share one.
    pub fn partition_concurrency(mut self, n: u32) -> Self {
        self.partition_concurrency = Some(n);
        self
    }

    /// At most `n` of its instances running in this process at once.
    pub fn per_worker(mut self, n: u32) -> Self {
        self.per_worker = Some(n);
        self
    }

    /// At most `n` dispatches in any window of `period`.
    pub fn rate_limit(mut self, n: u32, period: Duration) -> Self {
        self.rate = Some((n, period));
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its concurrency limit across workers, if any.
    pub fn concurrency_limit(&self) -> Option<u32> {
        self.concurrency
    }

    /// Its concurrency limit per partition key, if any.
    pub fn partition_limit(&self) -> Option<u32> {
        self.partition_concurrency
    }

    /// Its limit per worker process, if any.
    pub fn per_worker_limit(&self) -> Option<u32> {
        self.per_worker
    }

    /// Its rate limit (dispatches per period), if any.
    pub fn rate(&self) -> Option<(u32, Duration)> {
        self.rate
    }

    pub(crate) fn rate_ms(&self) -> Option<(u32, u64)> {
        self.rate
            .map(|(n, period)| (n, crate::time::duration_ms(period).max(1)))
    }

    pub(crate) fn check(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::Usage(UsageError::InvalidQueue {
                queue: self.name.clone(),
                reason: reason.to_string(),
            }))
        };
        if self.name.is_empty() || self.name.len() > MAX_QUEUE_NAME {
            return bad("the name must be 1 to 200 bytes long");
        }
        if [
            self.concurrency,
            self.partition_concurrency,
            self.per_worker,
        ]
        .contains(&Some(0))
            || self.rate.is_some_and(|(n, p)| n == 0 || p.is_zero())
        {
            return bad("a limit of zero would never dispatch anything");
        }
        Ok(())
    }
}

/// Where an instance goes in its queue (see [`Engine::enqueue_with`](crate::Engine::enqueue_with)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    pub(crate) priority: i32,
    pub(crate) partition: Option<String>,
    pub(crate) dedup: Option<String>,
    pub(crate) not_before: Option<SystemTime>,
    pub(crate) delay: Option<Duration>,
}

impl EnqueueOptions {
    /// Default options: priority 0, no partition, no deduplication id,
    /// dispatchable at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lower numbers are dispatched first (default 0); equal ones in
    /// enqueue order.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The partition key whose concurrency limit it counts against.
    pub fn partition(mut self, key: impl Into<String>) -> Self {
        self.partition = Some(key.into());
        self
    }

    /// A deduplication id: a second enqueue with the same id on the same
    /// queue is refused with [`UsageError::Duplicate`] while an instance
    /// enqueued with it has not finished.
    pub fn dedup(mut self, id: impl Into<String>) -> Self {
        self.dedup = Some(id.into());
        self
    }

    /// Not dispatched before `at`.
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Not dispatched before `delay` from now (on the engine's clock).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// A queue's limits and counts, from [`Engine::queues`](crate::Engine::queues).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The queue as declared.
    pub queue: Queue,
    /// Instances waiting in it (enqueued, not dispatched, not finished).
    pub pending: u64,
    /// Instances dispatched and not finished (on every worker).
    pub running: u64,
    /// Whether this engine declared it (else its limits are those stored
    /// by another worker, or unknown).
    pub declared: bool,
}

impl EnqueueOptions {
    /// The queue entry these options make on `queue`, enqueued at `now`.
    pub(crate) fn entry(self, queue: &str, now: u64) -> QueueEntry {
        let not_before_ms = self
            .not_before
            .map(crate::time::to_ms)
            .or(self
                .delay
                .map(|d| now.saturating_add(crate::time::duration_ms(d))))
            .unwrap_or(0);
        QueueEntry {
            queue: queue.to_string(),
            priority: self.priority,
            partition: self.partition,
            dedup: self.dedup,
            not_before_ms,
        }
    }
}
