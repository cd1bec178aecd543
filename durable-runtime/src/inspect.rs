//! What an operator sees of one instance: its [`Status`] and its audit
//! trail ([`History`], from [`Engine::history`](crate::Engine::history)).
//! Listings of many are in `listing.rs`.

use std::time::SystemTime;

use crate::records::{
    CheckpointRecord, CheckpointState, InstanceRecord, InstanceState, TransitionKind as StoredKind,
};
use crate::time::from_ms as time;

/// A step attempt that is running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InFlight {
    pub name: &'static str,
    pub occurrence: u32,
    /// A keyed step's key text.
    pub key: Option<String>,
    /// The step's start sequence (see `CheckpointRecord::seq`).
    pub seq: u64,
    pub attempt: u32,
    pub started_at_ms: u64,
}

/// A step attempt running now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunningStep {
    /// The step's name.
    pub name: String,
    /// Which occurrence of the name.
    pub occurrence: u32,
    /// Which attempt (1 for the first).
    pub attempt: u32,
    /// When this attempt started.
    pub since: SystemTime,
}

/// Where an instance stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Started and not finished: running now, or resumed at the next open.
    Running {
        /// The step attempts running now in this process, oldest first
        /// (empty between steps, and for an instance not running here).
        steps: Vec<RunningStep>,
    },
    /// Stopped by an error that needs attention (a checkpoint that no longer
    /// decodes, a store failure, replay divergence). Nothing was rewritten;
    /// the instance resumes when the engine next opens.
    Blocked {
        /// The error that blocked it.
        reason: String,
    },
    /// Finished; the workflow's output is stored.
    Completed {
        /// Whether the workflow returned `Err(..)`: `Some(true)` if so,
        /// `Some(false)` for any other output, `None` for an instance that
        /// finished under a version of durable that did not record it.
        is_err: Option<bool>,
    },
    /// Finished with an engine-level failure (a step panicked on every attempt).
    Failed {
        /// The error.
        reason: String,
    },
    /// Parked in a `sleep!` until `until`; it holds no task meanwhile.
    Sleeping {
        /// When it wakes.
        until: SystemTime,
    },
    /// Parked in a `wait_for!` until event `event` arrives (or `until`, its timeout).
    Waiting {
        /// The event's name.
        event: String,
        /// When the wait times out, if it has a timeout.
        until: Option<SystemTime>,
    },
    /// Cancelled with [`Engine::cancel`](crate::Engine::cancel).
    Cancelled,
    /// Resumed too many times in a row without finishing a step (the process
    /// probably crashes in it): not resumed automatically any more. Fix the
    /// cause, then call [`Engine::resume`](crate::Engine::resume).
    NeedsAttention {
        /// Why.
        reason: String,
    },
    /// Its recorded history does not fit the registered code (a recorded
    /// step is gone, or its type changed): set aside before any body ran.
    /// Nothing stored was changed; the build that started it can still
    /// finish it, and it is checked again at every open.
    Incompatible {
        /// The site and the change, in words.
        reason: String,
    },
    /// Paused with [`Engine::pause`](crate::Engine::pause): unfinished, no
    /// new step starts and a parked instance is not woken until
    /// [`Engine::unpause`](crate::Engine::unpause).
    Paused {
        /// When it was paused.
        since: SystemTime,
    },
    /// Enqueued with [`Engine::enqueue`](crate::Engine::enqueue) and waiting
    /// in its queue for a dispatch.
    Queued {
        /// The queue.
        queue: String,
    },
}

/// One change of an instance's status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransitionKind {
    /// The instance was created.
    Started,
    /// The instance was resumed after a restart or after being blocked.
    Resumed,
    /// The instance was blocked by an error.
    Blocked {
        /// The error.
        error: String,
    },
    /// The instance finished and its output was stored.
    Completed,
    /// The instance failed.
    Failed {
        /// The error.
        error: String,
    },
    /// The instance was cancelled.
    Cancelled,
    /// The instance was set aside after too many resumes without progress.
    NeedsAttention {
        /// Why.
        error: String,
    },
    /// The instance was set aside: its history does not fit the code.
    Incompatible {
        /// Why.
        error: String,
    },
    /// An operator set the instance going again with
    /// [`Engine::retry`](crate::Engine::retry).
    Retried {
        /// Who did it (the operator's name, or the user and process id).
        by: String,
        /// The failed step set aside (it runs again), if there was one.
        set_aside: Option<SetAsideStep>,
    },
    /// An operator resumed a cancelled or stopped instance with
    /// [`Engine::resume`](crate::Engine::resume).
    Reopened {
        /// Who did it.
        by: String,
        /// The status it had (`cancelled`, `blocked`, ..).
        from: String,
    },
    /// An operator paused the instance with
    /// [`Engine::pause`](crate::Engine::pause).
    Paused {
        /// Who did it.
        by: String,
    },
    /// An operator unpaused the instance with
    /// [`Engine::unpause`](crate::Engine::unpause).
    Unpaused {
        /// Who did it.
        by: String,
    },
    /// The instance was started with a deadline
    /// ([`StartOptions::deadline`](crate::StartOptions::deadline)).
    Deadline {
        /// When it is cancelled unless finished.
        at: SystemTime,
    },
    /// Its deadline passed before it finished: it was cancelled.
    DeadlinePassed {
        /// The deadline.
        at: SystemTime,
    },
    /// Created by [`Engine::fork`](crate::Engine::fork): it replays the
    /// checkpoints instance `from` recorded before step `step`.
    Forked {
        /// The instance it was forked from.
        from: String,
        /// The first step it runs again.
        step: String,
        /// Who did it.
        by: String,
    },
    /// Cancelled with [`Engine::cancel`](crate::Engine::cancel) while its
    /// workflow has compensations (`step!(.., compensate = ..)`): it stays
    /// unfinished until the compensations of its completed steps have run,
    /// then it ends cancelled.
    CancelRequested {
        /// Who did it.
        by: String,
    },
    /// The compensations of its completed steps ran, in reverse order,
    /// after it failed or was cancelled.
    Compensated {
        /// How many ran.
        count: u32,
    },
    /// The compensation of a step failed for good: the chain stopped there
    /// (the compensations of earlier steps did not run).
    CompensationFailed {
        /// The step whose compensation failed.
        step: String,
        /// Its occurrence or key, in words.
        at: String,
        /// The compensation's error.
        error: String,
    },
    /// Started by instance `parent` as its child
    /// ([`Ctx::start_child`](crate::Ctx::start_child)).
    ChildOf {
        /// The parent instance.
        parent: String,
        /// Whether cancelling the parent cancels this instance.
        cancel_with_parent: bool,
    },
    /// Enqueued on queue `queue` (`Engine::enqueue`): waits there until a
    /// dispatch takes it.
    Enqueued {
        /// The queue.
        queue: String,
        /// Its priority (lower first).
        priority: i32,
        /// Its partition key, if any.
        partition: Option<String>,
        /// Its deduplication id, if any.
        dedup: Option<String>,
        /// Not dispatched before this time.
        not_before: std::time::SystemTime,
    },
    /// Taken off its queue by a dispatch.
    Dispatched,
}

/// A failed step occurrence that [`Engine::retry`](crate::Engine::retry)
/// took out of the checkpoints; kept here, in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetAsideStep {
    /// The step's name.
    pub name: String,
    /// Which occurrence of the name.
    pub occurrence: u32,
    /// A keyed step's key text.
    pub key: Option<String>,
    /// The attempts it had made.
    pub attempts: u32,
    /// When its first attempt started.
    pub started_at: SystemTime,
    /// When it had failed.
    pub finished_at: Option<SystemTime>,
    /// How it had failed.
    pub outcome: String,
}

/// A timestamped [`TransitionKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: TransitionKind,
}

/// How a step occurrence ended, or where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepOutcome {
    /// The body returned `Ok`.
    Value {
        /// The Rust type of the checkpointed `Result`.
        type_name: String,
        /// Encoded size of the checkpointed outcome in bytes.
        size: usize,
    },
    /// The body returned `Err` on its last attempt (or a permanent error).
    Error {
        /// The Rust type of the checkpointed `Result`.
        type_name: String,
        /// The error, `Debug`-formatted.
        message: String,
    },
    /// Attempts failed and the step will be retried.
    Retrying {
        /// The last attempt's error.
        last_error: String,
    },
    /// The body panicked on its last attempt.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// A `sleep!` that ends (or ended) at `until`.
    Sleeping {
        /// Its deadline.
        until: SystemTime,
    },
    /// A `wait_for!` with a timeout, not yet finished.
    Waiting {
        /// When it times out.
        until: SystemTime,
    },
    /// A `wait_for!` that received its event.
    Received {
        /// The payload's Rust type.
        type_name: String,
        /// Encoded size of the payload in bytes.
        size: usize,
    },
    /// A `wait_for!` whose timeout passed first.
    TimedOut,
    /// The step's outcome was over `max_value_size`: recorded as the
    /// step's failure, so its body never runs again.
    TooLarge {
        /// The outcome's encoded size in bytes.
        size: u64,
        /// The limit it was over.
        limit: u64,
    },
    /// The step's last attempt ran past its timeout (`step!(name, timeout
    /// = d, ..)`): recorded as the step's failure.
    Expired {
        /// The step's timeout.
        timeout: std::time::Duration,
    },
    /// An attempt of the step is running now (in this process).
    Running {
        /// Which attempt (1 for the first).
        attempt: u32,
    },
}

/// One step occurrence in an instance's history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// Which occurrence of the name (0 for the first; loops count up; 0
    /// for a keyed step).
    pub occurrence: u32,
    /// A keyed step's key (`step!(name, key = k, ..)`), as `Debug` shows it.
    pub key: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt started.
    pub started_at: SystemTime,
    /// When the step finished, if it has.
    pub finished_at: Option<SystemTime>,
    /// Its outcome.
    pub outcome: StepOutcome,
}

/// Everything the store knows about one instance: the postmortem.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct History {
    /// The instance id.
    pub id: String,
    /// The workflow's name.
    pub workflow: String,
    /// Its status now.
    pub status: Status,
    /// When it was started.
    pub created_at: SystemTime,
    /// Its status changes, oldest first.
    pub transitions: Vec<Transition>,
    /// Its step occurrences, in the order they started.
    pub steps: Vec<StepRecord>,
    /// The instance that started this one as its child, if one did.
    pub parent: Option<String>,
    /// The ids of the child instances it started
    /// ([`Ctx::start_child`](crate::Ctx::start_child)), in start order.
    pub children: Vec<String>,
}

/// The status a stored state implies, before what only the engine knows
/// (parking, steps in flight) is added.
/// The status the store records for an instance: from its record, and
/// what it waits for if it is parked (no step attempts: the engine adds
/// those it runs).
pub(crate) fn stored_status(
    record: &InstanceRecord,
    park: Option<&crate::records::ParkRecord>,
) -> Status {
    if let Some(since) = record.paused_since() {
        return Status::Paused { since: time(since) };
    }
    if record.queued()
        && let Some((entry, _)) = record.queue_entry()
    {
        return Status::Queued {
            queue: entry.queue.clone(),
        };
    }
    if record.state == InstanceState::Running
        && let Some(park) = park
    {
        let until = park
            .conds
            .iter()
            .filter_map(|c| c.deadline_ms)
            .min()
            .map(time);
        return match park.conds.iter().find(|c| c.event_type.is_some()) {
            Some(event) => Status::Waiting {
                event: event.name.clone(),
                until,
            },
            None => Status::Sleeping {
                until: until.unwrap_or(std::time::UNIX_EPOCH),
            },
        };
    }
    status_of(&record.state)
}

pub(crate) fn status_of(state: &InstanceState) -> Status {
    match state {
        InstanceState::Running => Status::Running { steps: Vec::new() },
        InstanceState::Blocked { error } => Status::Blocked {
            reason: error.clone(),
        },
        InstanceState::Completed { .. } => Status::Completed { is_err: None },
        InstanceState::Returned { is_err, .. } => Status::Completed {
            is_err: Some(*is_err),
        },
        InstanceState::Failed { error } => Status::Failed {
            reason: error.clone(),
        },
        InstanceState::NeedsAttention { error } => Status::NeedsAttention {
            reason: error.clone(),
        },
        InstanceState::Cancelled => Status::Cancelled,
        InstanceState::Incompatible { error } => Status::Incompatible {
            reason: error.clone(),
        },
    }
}

/// The running steps of `in_flight`, oldest first.
pub(crate) fn running_steps(mut in_flight: Vec<InFlight>) -> Vec<RunningStep> {
    in_flight.sort_by_key(|a| (a.started_at_ms, a.name, a.occurrence));
    in_flight
        .into_iter()
        .map(|a| RunningStep {
            name: a.name.to_string(),
            occurrence: a.occurrence,
            attempt: a.attempt,
            since: time(a.started_at_ms),
        })
        .collect()
}

/// The history of `record` with its checkpoints and the attempts running now.
pub(crate) fn history_of(
    id: &str,
    record: &InstanceRecord,
    checkpoints: Vec<CheckpointRecord>,
    in_flight: &[InFlight],
) -> History {
    let children = crate::records::children_of(&checkpoints)
        .into_iter()
        .map(|c| c.id)
        .collect();
    let transitions = record
        .transitions
        .iter()
        .map(|t| Transition {
            at: time(t.at_ms),
            kind: match &t.kind {
                StoredKind::Started => TransitionKind::Started,
                StoredKind::Resumed => TransitionKind::Resumed,
                StoredKind::Blocked { error } => TransitionKind::Blocked {
                    error: error.clone(),
                },
                StoredKind::Completed => TransitionKind::Completed,
                StoredKind::Failed { error } => TransitionKind::Failed {
                    error: error.clone(),
                },
                StoredKind::NeedsAttention { error } => TransitionKind::NeedsAttention {
                    error: error.clone(),
                },
                StoredKind::Cancelled => TransitionKind::Cancelled,
                StoredKind::Incompatible { error } => TransitionKind::Incompatible {
                    error: error.clone(),
                },
                StoredKind::Retried { by, set_aside } => TransitionKind::Retried {
                    by: by.clone(),
                    set_aside: set_aside.as_ref().map(|s| SetAsideStep {
                        name: s.name.clone(),
                        occurrence: s.occurrence,
                        key: s.key.clone(),
                        attempts: s.attempts,
                        started_at: time(s.started_at_ms),
                        finished_at: s.finished_at_ms.map(time),
                        outcome: s.outcome.clone(),
                    }),
                },
                StoredKind::Reopened { by, from } => TransitionKind::Reopened {
                    by: by.clone(),
                    from: from.clone(),
                },
                StoredKind::Paused { by } => TransitionKind::Paused { by: by.clone() },
                StoredKind::Unpaused { by } => TransitionKind::Unpaused { by: by.clone() },
                StoredKind::Deadline { at_ms } => TransitionKind::Deadline { at: time(*at_ms) },
                StoredKind::DeadlinePassed { at_ms } => {
                    TransitionKind::DeadlinePassed { at: time(*at_ms) }
                }
                StoredKind::Forked { from, step, by } => TransitionKind::Forked {
                    from: from.clone(),
                    step: step.clone(),
                    by: by.clone(),
                },
                StoredKind::CancelRequested { by } => {
                    TransitionKind::CancelRequested { by: by.clone() }
                }
                StoredKind::Compensated { count } => TransitionKind::Compensated { count: *count },
                StoredKind::CompensationFailed { step, at, error } => {
                    TransitionKind::CompensationFailed {
                        step: step.clone(),
                        at: at.clone(),
                        error: error.clone(),
                    }
                }
                StoredKind::ChildOf { parent, cascade } => TransitionKind::ChildOf {
                    parent: parent.clone(),
                    cancel_with_parent: *cascade,
                },
                StoredKind::Enqueued(e) => TransitionKind::Enqueued {
                    queue: e.queue.clone(),
                    priority: e.priority,
                    partition: e.partition.clone(),
                    dedup: e.dedup.clone(),
                    not_before: time(e.not_before_ms),
                },
                StoredKind::Dispatched => TransitionKind::Dispatched,
            },
        })
        .collect();
    let mut steps: Vec<(u64, StepRecord)> = checkpoints
        .into_iter()
        .map(|c| {
            let (finished_at, outcome) = match c.state {
                CheckpointState::Retrying { last_error } => {
                    (None, StepOutcome::Retrying { last_error })
                }
                CheckpointState::Done {
                    finished_at_ms,
                    ok: true,
                    type_name,
                    outcome,
                    ..
                } => (
                    Some(time(finished_at_ms)),
                    StepOutcome::Value {
                        type_name,
                        size: outcome.len(),
                    },
                ),
                CheckpointState::Done {
                    finished_at_ms,
                    type_name,
                    error_text,
                    ..
                } => (
                    Some(time(finished_at_ms)),
                    StepOutcome::Error {
                        type_name,
                        message: error_text.unwrap_or_default(),
                    },
                ),
                CheckpointState::Panicked {
                    finished_at_ms,
                    message,
                } => (
                    Some(time(finished_at_ms)),
                    StepOutcome::Panicked { message },
                ),
                CheckpointState::Sleeping { deadline_ms, .. } => (
                    None,
                    StepOutcome::Sleeping {
                        until: time(deadline_ms),
                    },
                ),
                CheckpointState::Waiting { deadline_ms } => (
                    None,
                    StepOutcome::Waiting {
                        until: time(deadline_ms),
                    },
                ),
                CheckpointState::Received {
                    finished_at_ms,
                    type_name,
                    payload,
                    ..
                } => (
                    Some(time(finished_at_ms)),
                    StepOutcome::Received {
                        type_name,
                        size: payload.len(),
                    },
                ),
                CheckpointState::TimedOut { finished_at_ms } => {
                    (Some(time(finished_at_ms)), StepOutcome::TimedOut)
                }
                CheckpointState::TooLarge {
                    finished_at_ms,
                    size,
                    limit,
                } => (
                    Some(time(finished_at_ms)),
                    StepOutcome::TooLarge { size, limit },
                ),
                CheckpointState::Expired {
                    finished_at_ms,
                    timeout_ms,
                } => (
                    Some(time(finished_at_ms)),
                    StepOutcome::Expired {
                        timeout: std::time::Duration::from_millis(timeout_ms),
                    },
                ),
            };
            (
                c.seq,
                StepRecord {
                    name: c.name,
                    occurrence: c.occurrence,
                    key: c.key.map(|(_, text)| text),
                    attempts: c.attempts,
                    started_at: time(c.started_at_ms),
                    finished_at,
                    outcome,
                },
            )
        })
        .collect();
    for attempt in in_flight {
        let known = steps.iter_mut().map(|(_, s)| s).find(|s| {
            s.name == attempt.name && s.occurrence == attempt.occurrence && s.key == attempt.key
        });
        match known {
            // A step being retried: its checkpoint says `Retrying`.
            Some(step) => {
                step.attempts = step.attempts.max(attempt.attempt);
                step.outcome = StepOutcome::Running {
                    attempt: attempt.attempt,
                };
            }
            None => steps.push((
                attempt.seq,
                StepRecord {
                    name: attempt.name.to_string(),
                    occurrence: attempt.occurrence,
                    key: attempt.key.clone(),
                    attempts: attempt.attempt,
                    started_at: time(attempt.started_at_ms),
                    finished_at: None,
                    outcome: StepOutcome::Running {
                        attempt: attempt.attempt,
                    },
                },
            )),
        }
    }
    // In the order the sites started (their start sequence), which is
    // source order for sites started together by `join!`.
    steps.sort_by_key(|(seq, _)| *seq);
    let steps = steps.into_iter().map(|(_, step)| step).collect();
    History {
        id: id.to_string(),
        workflow: record.workflow.clone(),
        status: status_of(&record.state),
        created_at: time(record.created_at_ms),
        transitions,
        steps,
        parent: record.parent().map(|(p, _)| p.to_string()),
        children,
    }
}
