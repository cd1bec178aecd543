//! Counters, gauges and histograms through the
//! [`metrics`](https://docs.rs/metrics) facade (feature `metrics`).
//!
//! The runtime records through whatever recorder the application installs
//! (for example `metrics-exporter-prometheus`, or any other exporter of the
//! facade); without one, recording costs a relaxed atomic load. Without the
//! feature every recording function here is an empty `#[inline]` function
//! and nothing is recorded.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `durable_instances_started_total` | counter | `workflow` | instances created (started, or forked by an operator) |
//! | `durable_instances_finished_total` | counter | `workflow`, `outcome` | instance ends recorded: `completed`, `failed`, `cancelled` (by a cancel or its deadline), `blocked`, `needs_attention`, `incompatible` |
//! | `durable_steps_total` | counter | `workflow`, `step`, `outcome` | step occurrences: `ran` (a body's `Ok` checkpointed), `replayed` (taken from its checkpoint), `failed` (a final error, panic, timeout or outcome too large checkpointed) |
//! | `durable_step_retries_total` | counter | `workflow`, `step` | failed attempts that are retried |
//! | `durable_step_duration_seconds` | histogram | `workflow`, `step` | one attempt's body run (wall time) |
//! | `durable_commit_duration_seconds` | histogram | `backend` | one group commit (`embedded`: the store's apply with its fsync; `postgres`: the group's transaction, retries included) |
//! | `durable_commit_group_size` | histogram | `backend` | writes in one group commit |
//! | `durable_parked_instances` | gauge | | instances in the park tables of this process's embedded engines |
//! | `durable_claim_lag_seconds` | histogram | | how late a parked timer was claimed after its due time, on the engine's clock |
//! | `durable_events_sent_total` | counter | `workflow` | events stored by `send_event` |
//!
//! No metric is labelled by instance id or step key: their number has no
//! bound. Workflow and step names are compile-time literals. A blocked or
//! cancelled instance that is later resumed by hand and ends again counts
//! again in `durable_instances_finished_total`.

// Without the feature the names and labels are unused, and the module is
// private.
#![cfg_attr(not(feature = "metrics"), allow(dead_code, unreachable_pub))]

use crate::records::InstanceState;

/// Instances created.
pub const INSTANCES_STARTED: &str = "durable_instances_started_total";
/// Instance ends recorded, by `outcome`.
pub const INSTANCES_FINISHED: &str = "durable_instances_finished_total";
/// Step occurrences, by `outcome`.
pub const STEPS: &str = "durable_steps_total";
/// Failed step attempts that are retried.
pub const STEP_RETRIES: &str = "durable_step_retries_total";
/// Seconds one attempt's body ran.
pub const STEP_DURATION: &str = "durable_step_duration_seconds";
/// Seconds one group commit took.
pub const COMMIT_DURATION: &str = "durable_commit_duration_seconds";
/// Writes in one group commit.
pub const COMMIT_GROUP_SIZE: &str = "durable_commit_group_size";
/// Instances parked (embedded backend).
pub const PARKED_INSTANCES: &str = "durable_parked_instances";
/// Seconds between a parked timer's due time and its claim.
pub const CLAIM_LAG: &str = "durable_claim_lag_seconds";
/// Events stored.
pub const EVENTS_SENT: &str = "durable_events_sent_total";

/// How a step occurrence went, for [`STEPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    /// Its body ran and its `Ok` was checkpointed.
    Ran,
    /// Taken from its checkpoint.
    Replayed,
    /// Its final error, panic, timeout or too large outcome was checkpointed.
    Failed,
}

impl StepOutcome {
    /// `Ran` for an `Ok` outcome, `Failed` for an `Err`.
    #[inline]
    pub(crate) fn of(ok: bool) -> StepOutcome {
        if ok {
            StepOutcome::Ran
        } else {
            StepOutcome::Failed
        }
    }

    fn label(self) -> &'static str {
        match self {
            StepOutcome::Ran => "ran",
            StepOutcome::Replayed => "replayed",
            StepOutcome::Failed => "failed",
        }
    }
}

/// Which backend wrote a group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Embedded,
    #[cfg(feature = "postgres")]
    Postgres,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            #[cfg(feature = "postgres")]
            Backend::Postgres => "postgres",
        }
    }
}

/// The `outcome` label of an instance in `state`, if that state is an end.
fn finished_label(state: &InstanceState) -> Option<&'static str> {
    Some(match state {
        InstanceState::Completed { .. } | InstanceState::Returned { .. } => "completed",
        InstanceState::Failed { .. } => "failed",
        InstanceState::Cancelled => "cancelled",
        InstanceState::Blocked { .. } => "blocked",
        InstanceState::NeedsAttention { .. } => "needs_attention",
        InstanceState::Incompatible { .. } => "incompatible",
        InstanceState::Running => return None,
    })
}

/// Registers the description and unit of every metric with the installed
/// recorder. The engine calls it at each open (a recorder installed before
/// the first open gets them); calling it again changes nothing.
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        INSTANCES_STARTED,
        Unit::Count,
        "Instances created (started, or forked by an operator)."
    );
    describe_counter!(
        INSTANCES_FINISHED,
        Unit::Count,
        "Instance ends recorded, by outcome: completed, failed, cancelled, blocked, needs_attention, incompatible."
    );
    describe_counter!(
        STEPS,
        Unit::Count,
        "Step occurrences, by outcome: ran (its Ok checkpointed), replayed (from its checkpoint), failed (a final failure checkpointed)."
    );
    describe_counter!(
        STEP_RETRIES,
        Unit::Count,
        "Failed step attempts that are retried."
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Wall time of one step attempt's body."
    );
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Time of one group commit, by backend."
    );
    describe_histogram!(
        COMMIT_GROUP_SIZE,
        Unit::Count,
        "Writes in one group commit, by backend."
    );
    describe_gauge!(
        PARKED_INSTANCES,
        Unit::Count,
        "Instances parked in this process's embedded engines."
    );
    describe_histogram!(
        CLAIM_LAG,
        Unit::Seconds,
        "How late a parked timer was claimed after its due time."
    );
    describe_counter!(EVENTS_SENT, Unit::Count, "Events stored by send_event.");
}

/// Registers the metrics' descriptions: nothing without the feature.
#[cfg(not(feature = "metrics"))]
#[inline]
pub(crate) fn describe() {}

/// The start of something whose duration is recorded (nothing without the
/// feature).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl Timer {
    /// Now.
    #[inline]
    pub(crate) fn start() -> Timer {
        Timer {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    #[cfg(feature = "metrics")]
    fn seconds(self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// An instance end about to be written: [`record`](Ending::record) it once
/// the write succeeded.
#[derive(Debug)]
#[must_use]
pub(crate) struct Ending {
    #[cfg(feature = "metrics")]
    end: Option<(String, &'static str)>,
}

impl Ending {
    /// The end of an instance of `workflow` in `state`.
    #[inline]
    #[allow(unused_variables)]
    pub(crate) fn new(workflow: &str, state: &InstanceState) -> Ending {
        Ending {
            #[cfg(feature = "metrics")]
            end: finished_label(state).map(|outcome| (workflow.to_owned(), outcome)),
        }
    }

    /// Counts the end (it was written).
    #[inline]
    pub(crate) fn record(self) {
        #[cfg(feature = "metrics")]
        if let Some((workflow, outcome)) = self.end {
            ::metrics::counter!(INSTANCES_FINISHED, "workflow" => workflow, "outcome" => outcome)
                .increment(1);
        }
    }
}

/// An instance of `workflow` was created.
#[inline]
#[allow(unused_variables)]
pub(crate) fn instance_started(workflow: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(INSTANCES_STARTED, "workflow" => workflow.to_owned()).increment(1);
}

/// An instance of `workflow` ended in `state` (written by someone other
/// than its driver: a cancel).
#[inline]
pub(crate) fn instance_finished(workflow: &str, state: &InstanceState) {
    Ending::new(workflow, state).record();
}

/// A step occurrence of `workflow` went as `outcome`.
#[inline]
#[allow(unused_variables)]
pub(crate) fn step(workflow: &'static str, step: &'static str, outcome: StepOutcome) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(STEPS, "workflow" => workflow, "step" => step, "outcome" => outcome.label())
        .increment(1);
}

/// A failed attempt of a step of `workflow` is retried.
#[inline]
#[allow(unused_variables)]
pub(crate) fn step_retry(workflow: &'static str, step: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(STEP_RETRIES, "workflow" => workflow, "step" => step).increment(1);
}

/// A step attempt's body, started at `timer`, is done.
#[inline]
#[allow(unused_variables)]
pub(crate) fn step_body(workflow: &'static str, step: &'static str, timer: Timer) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(STEP_DURATION, "workflow" => workflow, "step" => step)
        .record(timer.seconds());
}

/// A group commit of `writes` writes, started at `timer`, is done.
#[inline]
#[allow(unused_variables)]
pub(crate) fn commit_group(backend: Backend, writes: usize, timer: Timer) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::histogram!(COMMIT_DURATION, "backend" => backend.label())
            .record(timer.seconds());
        ::metrics::histogram!(COMMIT_GROUP_SIZE, "backend" => backend.label())
            .record(writes as f64);
    }
}

/// `delta` instances were parked (or unparked, when negative).
#[inline]
#[allow(unused_variables)]
pub(crate) fn parked(delta: i64) {
    #[cfg(feature = "metrics")]
    if delta != 0 {
        ::metrics::gauge!(PARKED_INSTANCES).increment(delta as f64);
    }
}

/// A parked timer was claimed `ms` milliseconds after its due time.
#[inline]
#[allow(unused_variables)]
pub(crate) fn claim_lag_ms(ms: u64) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(CLAIM_LAG).record(ms as f64 / 1000.0);
}

/// An event for an instance of `workflow` was stored.
#[inline]
#[allow(unused_variables)]
pub(crate) fn event_sent(workflow: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(EVENTS_SENT, "workflow" => workflow.to_owned()).increment(1);
}
