//! Named crash points for crash-consistency tests (feature `crash-points`).
//!
//! With the feature on, `DURABLE_CRASH_POINT=name:N` makes the process abort
//! (no unwinding, no destructors, no flush: like `kill -9`) the N-th time
//! point `name` is reached (N counts from 1). Without the feature every point
//! compiles to nothing.
//!
//! Points, in checkpoint-path order: `start.before_record`,
//! `start.after_record`, `recovery.before_resume`, `step.before_body`,
//! `step.after_body`, `store.before_flush` (before the write-ahead log
//! append), `store.before_fsync` (appended, not yet `fdatasync`ed),
//! `store.after_fsync` (durable in the log, not yet applied to sled),
//! `step.after_write`, `complete.before_write`, `complete.after_write`, and
//! `store.before_wal_reset` (a checkpoint: sled synced, log not yet emptied).

/// Every crash point, for sweeps.
#[cfg_attr(not(feature = "crash-points"), allow(dead_code, unreachable_pub))]
pub const CRASH_POINTS: &[&str] = &[
    "start.before_record",
    "start.after_record",
    "recovery.before_resume",
    "step.before_body",
    "step.after_body",
    "store.before_flush",
    "store.before_fsync",
    "store.after_fsync",
    "step.after_write",
    "complete.before_write",
    "complete.after_write",
    "store.before_wal_reset",
];

/// Reaches crash point `name`.
#[cfg(feature = "crash-points")]
pub(crate) fn point(name: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("DURABLE_CRASH_POINT").ok()?;
        let (point, n) = spec.rsplit_once(':')?;
        Some((point.to_string(), n.parse().ok()?))
    });
    if let Some((point, n)) = target
        && point == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("durable: crash point {name} hit {n} times: aborting");
        std::process::abort();
    }
}

/// Reaches crash point `name` (the feature is off: nothing happens).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn point(_name: &'static str) {}
