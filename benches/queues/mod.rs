//! Queue scenarios shared by the embedded and the PostgreSQL benchmark:
//! dispatch overhead (enqueue -> first step begins, against start -> first
//! step begins in the same run) and the most instances ever seen in flight
//! under a global concurrency limit with several worker engines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use durable::Queue;
use durable::prelude::*;

/// When each instance's first step began.
static BEGAN: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MAX_SEEN: AtomicUsize = AtomicUsize::new(0);

// It reads the time in a step on purpose.
#[durable(name = "bench_queue_first", allow = "nondeterminism")]
async fn first(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let id = ctx.id().to_string();
    step!(
        "begin",
        async {
            BEGAN
                .lock()
                .unwrap()
                .get_or_insert_default()
                .insert(id.clone(), Instant::now());
            Ok::<_, String>(n)
        }
        .await
    )
}

#[durable(name = "bench_queue_held")]
async fn held(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    step!(
        "work",
        async {
            let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
            MAX_SEEN.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(n)
        }
        .await
    )
}

/// The queue the scenarios use, with a global concurrency limit.
pub fn queue(limit: u32) -> Queue {
    Queue::new("bench").concurrency(limit)
}

/// Registers the scenarios' workflows and queue on `builder`.
pub fn register(builder: durable::EngineBuilder, limit: u32) -> durable::EngineBuilder {
    builder.register(first).register(held).queue(queue(limit))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median time from the call to the first step's beginning, one instance
/// at a time: (with `start`, with `enqueue` on a queue with no instance
/// ahead).
pub async fn dispatch_overhead(engine: &Engine, tag: &str, instances: u64) -> (Duration, Duration) {
    let mut started = Vec::new();
    let mut enqueued = Vec::new();
    for n in 0..instances {
        for queued in [false, true] {
            let id = format!("{tag}-{}-{n}", if queued { "q" } else { "s" });
            let t = Instant::now();
            let handle = if queued {
                engine
                    .enqueue("bench", first, id.as_str(), n)
                    .await
                    .unwrap()
            } else {
                engine.start(first, id.as_str(), n).await.unwrap()
            };
            handle.result().await.unwrap().unwrap();
            let began = BEGAN.lock().unwrap().as_mut().unwrap().remove(&id).unwrap();
            let lat = began.saturating_duration_since(t);
            if queued {
                enqueued.push(lat);
            } else {
                started.push(lat);
            }
        }
    }
    (median(started), median(enqueued))
}

/// Enqueues `instances` on the limited queue through the first of
/// `engines` (every engine dispatches) and returns the most ever seen in
/// flight at once, across all of them (the PostgreSQL benchmark's: one
/// embedded store has one worker).
#[allow(dead_code)]
pub async fn limit_under_workers(engines: &[Engine], tag: &str, instances: u64) -> usize {
    MAX_SEEN.store(0, Ordering::SeqCst);
    let items = (0..instances).map(|n| (format!("{tag}-{n}"), n));
    let handles = engines[0].enqueue_many("bench", held, items).await.unwrap();
    for handle in handles {
        handle.result().await.unwrap().unwrap();
    }
    MAX_SEEN.load(Ordering::SeqCst)
}
