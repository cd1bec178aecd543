//! What the engine stores, and the keys it stores it under.
//!
//! Keys are unambiguous for any id or name: the id is length-prefixed, the
//! step name too, and numbers are big-endian so prefix scans return them in
//! order. Values go through [`crate::codec`].

use serde::{Deserialize, Serialize};

/// Value of an instance's entry in `Active`: how many times in a row it was
/// resumed without finishing a step.
pub(crate) fn recoveries_value(count: u32) -> Vec<u8> {
    count.to_be_bytes().to_vec()
}

/// Reads a value written by [`recoveries_value`]; anything else counts as 0.
pub(crate) fn recoveries_of(value: &[u8]) -> u32 {
    value.try_into().map(u32::from_be_bytes).unwrap_or(0)
}

/// Key of an instance in `Instances` and `Active`: the id's bytes.
pub(crate) fn instance_key(id: &str) -> Vec<u8> {
    id.as_bytes().to_vec()
}

/// Key of an instance in the `Created` index: creation time (big-endian
/// milliseconds, so keys sort by time), then the id.
pub(crate) fn created_key(created_at_ms: u64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&created_at_ms.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The id in a key written by [`created_key`].
pub(crate) fn id_of_created_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(8..)?).ok()
}

/// Prefix of every checkpoint and event key of one instance.
pub(crate) fn instance_prefix(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + id.len() + 16);
    key.extend_from_slice(&(id.len() as u32).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Prefix of the keys of one name of one instance: `len(id) id len(name) name`.
pub(crate) fn name_prefix(id: &str, name: &str) -> Vec<u8> {
    let mut key = instance_prefix(id);
    key.extend_from_slice(&(name.len() as u32).to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

/// Key of a keyed step in `Checkpoints`: `len(id) id len(name) name FFFFFFFF key`.
/// Occurrence keys have exactly four bytes after the name, keyed ones more.
pub(crate) fn keyed_key(id: &str, name: &str, key: &[u8]) -> Vec<u8> {
    let mut out = name_prefix(id, name);
    out.extend_from_slice(&u32::MAX.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Key of one occurrence of a step (or sleep or wait) in `Checkpoints`, or
/// of one event in `Events`: `len(id) id len(name) name n`.
pub(crate) fn occurrence_key(id: &str, name: &str, n: u32) -> Vec<u8> {
    let mut key = name_prefix(id, name);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// How a step occurrence is identified within its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum At {
    /// The n-th call of the name in this instance.
    Occurrence(u32),
    /// A keyed step (`step!(name, key = k, ..)`): the key's encoding and text.
    Key(Vec<u8>, String),
}

impl At {
    /// The occurrence number stored in the record (0 for a keyed step).
    pub(crate) fn occurrence(&self) -> u32 {
        match self {
            At::Occurrence(n) => *n,
            At::Key(..) => 0,
        }
    }

    /// The key stored in the record.
    pub(crate) fn key(&self) -> Option<(Vec<u8>, String)> {
        match self {
            At::Occurrence(_) => None,
            At::Key(bytes, text) => Some((bytes.clone(), text.clone())),
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Occurrence(n) => write!(f, "occurrence {n}"),
            At::Key(_, text) => write!(f, "key {text}"),
        }
    }
}

/// An instance's stored state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub workflow: String,
    /// The workflow version the instance started on.
    pub version: u32,
    /// The hash of the manifest the instance started with (see `manifest`).
    pub manifest: u64,
    #[serde(with = "crate::codec::bytes")]
    pub input: Vec<u8>,
    pub state: InstanceState,
    pub created_at_ms: u64,
    pub transitions: Vec<TransitionRecord>,
}

/// Where an instance stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) enum InstanceState {
    Running,
    /// Finished, written by versions that did not record `is_err`; read only.
    Completed {
        #[serde(with = "crate::codec::bytes")]
        output: Vec<u8>,
    },
    Failed {
        error: String,
    },
    Blocked {
        error: String,
    },
    /// Resumed too many times without progress: not resumed automatically.
    NeedsAttention {
        error: String,
    },
    /// Cancelled by `Engine::cancel`.
    Cancelled,
    /// Finished: the encoded output, and whether the workflow returned `Err`.
    /// (Appended last: older records keep their encoding.)
    Returned {
        #[serde(with = "crate::codec::bytes")]
        output: Vec<u8>,
        is_err: bool,
    },
    /// Its recorded history does not fit the registered code: set aside
    /// before any body ran; the code that started it can still finish it.
    Incompatible {
        error: String,
    },
}

/// One change of an instance's state, for its history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TransitionRecord {
    pub at_ms: u64,
    pub kind: TransitionKind,
}

/// What happened to the instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) enum TransitionKind {
    Started,
    Resumed,
    Blocked {
        error: String,
    },
    Completed,
    Failed {
        error: String,
    },
    NeedsAttention {
        error: String,
    },
    Cancelled,
    Incompatible {
        error: String,
    },
    // Appended below: older records keep their encoding.
    /// Set going again by hand with `Engine::retry`: `set_aside` describes
    /// the failed checkpoint taken out of the way (its step runs again).
    Retried {
        by: String,
        set_aside: Option<SetAside>,
    },
    /// A cancelled (or otherwise stopped) instance set going again by hand
    /// with `Engine::resume`; `from` is the status it had.
    Reopened {
        by: String,
        from: String,
    },
    /// Paused with `Engine::pause`: no new step starts, a parked instance
    /// is not woken, until `Unpaused`.
    Paused {
        by: String,
    },
    /// Unpaused with `Engine::unpause`.
    Unpaused {
        by: String,
    },
    /// The instance's deadline (`StartOptions::deadline`), recorded at start.
    Deadline {
        at_ms: u64,
    },
    /// Its deadline passed before it finished: it was cancelled.
    DeadlinePassed {
        at_ms: u64,
    },
    /// Created by `Engine::fork` from instance `from`, replaying its
    /// checkpoints recorded before step `step`.
    Forked {
        from: String,
        step: String,
        by: String,
    },
    /// Cancelled with `Engine::cancel` while its workflow has
    /// compensations: it stays unfinished until a run has compensated its
    /// completed steps, then it is `Cancelled`.
    CancelRequested {
        by: String,
    },
    /// The compensations of its completed steps ran (`count` of them),
    /// after it failed or was cancelled.
    Compensated {
        count: u32,
    },
    /// The compensation of step `step` (`at`: its occurrence or key)
    /// failed for good: the chain stopped there.
    CompensationFailed {
        step: String,
        at: String,
        error: String,
    },
    /// Started by instance `parent` with `Ctx::start_child`; with
    /// `cascade`, cancelling the parent cancels it.
    ChildOf {
        parent: String,
        cascade: bool,
    },
    /// Enqueued on a queue (`Engine::enqueue`): not run until dispatched.
    Enqueued(QueueEntry),
    /// Taken off its queue by a dispatch: runnable from now on.
    Dispatched,
}

/// Where an enqueued instance waits: its queue and its place there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct QueueEntry {
    pub queue: String,
    /// Lower first; equal priorities in enqueue order.
    pub priority: i32,
    /// The partition key its concurrency limit is counted in, if any.
    pub partition: Option<String>,
    /// The deduplication id, if any.
    pub dedup: Option<String>,
    /// Not dispatched before this time (ms on the engine's clock).
    pub not_before_ms: u64,
}

/// Transitions kept per instance; older `Resumed` entries are dropped first.
const MAX_TRANSITIONS: usize = 64;

impl InstanceRecord {
    /// Appends `transition`, dropping the oldest `Resumed` entry once the
    /// record holds [`MAX_TRANSITIONS`].
    pub(crate) fn push_transition(&mut self, transition: TransitionRecord) {
        if self.transitions.len() >= MAX_TRANSITIONS
            && let Some(i) = self
                .transitions
                .iter()
                .position(|t| t.kind == TransitionKind::Resumed)
        {
            self.transitions.remove(i);
        }
        self.transitions.push(transition);
    }

    /// Takes `stored`, the transitions in the store (an operator may have
    /// recorded some since the owner's claim), as this record's, if known,
    /// then appends `appended`: what a [`Write::Record`] with a transition
    /// to append writes, read and written under the instance's lock.
    ///
    /// [`Write::Record`]: crate::backend::Write::Record
    pub(crate) fn restate(
        &mut self,
        stored: Option<Vec<TransitionRecord>>,
        appended: TransitionRecord,
    ) {
        if let Some(stored) = stored {
            self.transitions = stored;
        }
        self.push_transition(appended);
    }

    /// Whether a cancel was requested that has not yet been carried out
    /// (the instance compensates, then ends cancelled): unfinished, and its
    /// last `CancelRequested` is not followed by a reopening.
    pub(crate) fn cancel_requested(&self) -> bool {
        if !matches!(
            self.state,
            InstanceState::Running | InstanceState::Blocked { .. }
        ) {
            return false;
        }
        for t in self.transitions.iter().rev() {
            match t.kind {
                TransitionKind::CancelRequested { .. } => return true,
                TransitionKind::Retried { .. } | TransitionKind::Reopened { .. } => return false,
                _ => {}
            }
        }
        false
    }

    /// The parent that started this instance as its child, and whether
    /// cancelling the parent cancels it.
    pub(crate) fn parent(&self) -> Option<(&str, bool)> {
        self.transitions.iter().find_map(|t| match &t.kind {
            TransitionKind::ChildOf { parent, cascade } => Some((parent.as_str(), *cascade)),
            _ => None,
        })
    }

    /// The instance's deadline, if it was started with one.
    pub(crate) fn deadline_ms(&self) -> Option<u64> {
        self.transitions.iter().find_map(|t| match t.kind {
            TransitionKind::Deadline { at_ms } => Some(at_ms),
            _ => None,
        })
    }

    /// The queue entry of an instance that was enqueued, and whether it
    /// was dispatched since.
    pub(crate) fn queue_entry(&self) -> Option<(&QueueEntry, bool)> {
        let mut found = None;
        for t in &self.transitions {
            match &t.kind {
                TransitionKind::Enqueued(entry) => found = Some((entry, false)),
                TransitionKind::Dispatched => {
                    if let Some((_, dispatched)) = found.as_mut() {
                        *dispatched = true;
                    }
                }
                _ => {}
            }
        }
        found
    }

    /// Whether the instance waits in its queue: enqueued, not dispatched,
    /// unfinished. No claim takes it; only a dispatch does.
    pub(crate) fn queued(&self) -> bool {
        matches!(self.queue_entry(), Some((_, false)))
            && matches!(
                self.state,
                InstanceState::Running | InstanceState::Blocked { .. }
            )
    }

    /// When the instance was paused, if it is paused now: unfinished, and
    /// its last pause is not followed by an unpause or a reopening.
    pub(crate) fn paused_since(&self) -> Option<u64> {
        if matches!(
            self.state,
            InstanceState::Completed { .. }
                | InstanceState::Returned { .. }
                | InstanceState::Failed { .. }
                | InstanceState::Cancelled
        ) {
            return None;
        }
        for t in self.transitions.iter().rev() {
            match t.kind {
                TransitionKind::Paused { .. } => return Some(t.at_ms),
                TransitionKind::Unpaused { .. }
                | TransitionKind::Retried { .. }
                | TransitionKind::Reopened { .. } => return None,
                _ => {}
            }
        }
        None
    }
}

/// A failed checkpoint set aside by `Engine::retry`: kept in the history
/// (the transition that set it aside) after it left the checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct SetAside {
    pub name: String,
    pub occurrence: u32,
    pub key: Option<String>,
    pub attempts: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// How it had ended (the error, panic or timeout).
    pub outcome: String,
}

/// One step occurrence's stored state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CheckpointRecord {
    pub name: String,
    pub occurrence: u32,
    /// A keyed step's key (its encoding) and its text; `None` when the step
    /// is identified by its occurrence number.
    pub key: Option<(Vec<u8>, String)>,
    /// Whether the site is declared in the workflow's manifest (written by
    /// `step!` / `wait_for!` / `sleep!`, not by `Ctx::step` from a helper).
    pub declared: bool,
    /// When the site was created relative to the instance's other sites:
    /// `History::steps` lists them in this order.
    pub seq: u64,
    pub attempts: u32,
    pub started_at_ms: u64,
    pub state: CheckpointState,
}

/// A site of a reserved name (`durable::...`: a child's start, a published
/// value, an enqueue): where its checkpoint goes.
#[derive(Debug, Clone)]
pub(crate) struct ReservedSite {
    pub name: &'static str,
    pub occurrence: u32,
    pub key: Option<(Vec<u8>, String)>,
    pub seq: u64,
    pub started_at_ms: u64,
}

impl CheckpointRecord {
    /// The finished checkpoint of reserved site `site`, at `now_ms`: its
    /// outcome is `outcome` (the encoded record of what the site did), `ok`
    /// and `error_text` say how it went. No body ran: no attempts.
    pub(crate) fn reserved(
        site: ReservedSite,
        outcome: Vec<u8>,
        ok: bool,
        error_text: Option<String>,
        now_ms: u64,
    ) -> CheckpointRecord {
        CheckpointRecord {
            name: site.name.to_string(),
            occurrence: site.occurrence,
            key: site.key,
            declared: false,
            seq: site.seq,
            attempts: 0,
            started_at_ms: site.started_at_ms,
            state: CheckpointState::Done {
                finished_at_ms: now_ms,
                ok,
                type_name: site.name.to_string(),
                fingerprint: 0,
                outcome,
                error_text,
            },
        }
    }
}

/// Whether the step finished and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum CheckpointState {
    /// Failed attempts so far; the step is not finished.
    Retrying { last_error: String },
    /// The step's final outcome: the encoded `Result<T, E>`.
    Done {
        finished_at_ms: u64,
        ok: bool,
        type_name: String,
        /// The fingerprint of the step's `Result<T, E>` types when written.
        fingerprint: u64,
        #[serde(with = "crate::codec::bytes")]
        outcome: Vec<u8>,
        error_text: Option<String>,
    },
    /// The step's body panicked on its last attempt.
    Panicked {
        finished_at_ms: u64,
        message: String,
    },
    /// A `sleep!` and its absolute deadline, recorded when first reached.
    Sleeping { deadline_ms: u64, duration_ms: u64 },
    /// A `wait_for!` with a timeout, and the deadline recorded when first reached.
    Waiting { deadline_ms: u64 },
    /// A `wait_for!` that consumed an event: its encoded payload.
    Received {
        finished_at_ms: u64,
        type_name: String,
        /// The fingerprint of the payload's type when sent.
        fingerprint: u64,
        #[serde(with = "crate::codec::bytes")]
        payload: Vec<u8>,
    },
    /// A `wait_for!` whose timeout passed before an event came.
    TimedOut { finished_at_ms: u64 },
    /// The step's outcome was over `max_value_size`: recorded as a failure
    /// so that its body never runs again.
    TooLarge {
        finished_at_ms: u64,
        size: u64,
        limit: u64,
    },
    /// The step's last attempt ran past the step's timeout (`step!(name,
    /// timeout = d, ..)`): its failure, so its body never runs again.
    /// (Appended last: older records keep their encoding.)
    Expired {
        finished_at_ms: u64,
        timeout_ms: u64,
    },
}

/// What a parked instance waits for; stored in `Timers` under its id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ParkRecord {
    pub parked_at_ms: u64,
    pub conds: Vec<WaitCond>,
}

/// One thing a parked instance waits for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct WaitCond {
    pub name: String,
    pub occurrence: u32,
    /// When the wait ends by itself (a sleep's deadline, a wait's timeout).
    pub deadline_ms: Option<u64>,
    /// For a `wait_for!`: the payload type it expects.
    pub event_type: Option<String>,
}

/// An event sent to an instance; stored in `Events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EventRecord {
    pub type_name: String,
    /// The payload type's fingerprint and shape.
    pub fingerprint: u64,
    pub shape: String,
    #[serde(with = "crate::codec::bytes")]
    pub payload: Vec<u8>,
    pub sent_at_ms: u64,
}

/// The reserved step name of `Ctx::set_event` checkpoints. Their outcome
/// is the encoded `(key, value)` they published.
pub(crate) const SET_EVENT: &str = "durable::set_event";

/// The published state that the `set_event` checkpoints among
/// `checkpoints` wrote: the last value of each key in workflow order (a
/// fork's new instance starts with it). Checkpoints that do not decode are
/// left out.
pub(crate) fn published_by(checkpoints: &[CheckpointRecord]) -> Vec<(String, EventRecord)> {
    let mut sets: Vec<&CheckpointRecord> =
        checkpoints.iter().filter(|c| c.name == SET_EVENT).collect();
    sets.sort_by_key(|c| c.occurrence);
    let mut last = std::collections::BTreeMap::new();
    for c in sets {
        if let CheckpointState::Done { outcome, .. } = &c.state
            && let Ok((key, value)) = crate::codec::decode::<(String, EventRecord)>(outcome)
        {
            last.insert(key, value);
        }
    }
    last.into_iter().collect()
}

/// The reserved step name of `Ctx::write_stream` checkpoints. Their
/// outcome is the encoded `(key, offset, value)` they appended.
pub(crate) const WRITE_STREAM: &str = "durable::write_stream";

/// The stream entries that the `write_stream` checkpoints among
/// `checkpoints` appended: (key, offset, value). Checkpoints that do not
/// decode are left out.
pub(crate) fn streamed_by(checkpoints: &[CheckpointRecord]) -> Vec<(String, u64, EventRecord)> {
    checkpoints
        .iter()
        .filter(|c| c.name == WRITE_STREAM)
        .filter_map(|c| match &c.state {
            CheckpointState::Done { outcome, .. } => crate::codec::decode(outcome).ok(),
            _ => None,
        })
        .collect()
}

/// The reserved step name of `Ctx::start_child` checkpoints. Their
/// outcome is the encoded [`ChildStarted`].
pub(crate) const START_CHILD: &str = "durable::start_child";

/// The reserved step name of the checkpoints of awaited child results,
/// keyed by the child's id. Their outcome is the encoded [`ChildEnd`].
pub(crate) const CHILD_RESULT: &str = "durable::child_result";

/// What a `START_CHILD` checkpoint records: the child's id, workflow and
/// whether cancelling the parent cancels it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ChildStarted {
    pub id: String,
    pub workflow: String,
    pub cascade: bool,
}

/// How a child instance ended, as its parent recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) enum ChildEnd {
    /// It returned: its encoded output.
    Returned(Vec<u8>),
    /// It failed: the reason.
    Failed(String),
    /// It was cancelled.
    Cancelled,
}

/// The children that the `start_child` checkpoints among `checkpoints`
/// started, in start order. Checkpoints that do not decode are left out.
pub(crate) fn children_of(checkpoints: &[CheckpointRecord]) -> Vec<ChildStarted> {
    let mut started: Vec<&CheckpointRecord> = checkpoints
        .iter()
        .filter(|c| c.name == START_CHILD)
        .collect();
    started.sort_by_key(|c| c.seq);
    started
        .into_iter()
        .filter_map(|c| match &c.state {
            CheckpointState::Done { outcome, .. } => crate::codec::decode(outcome).ok(),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unambiguous() {
        assert_ne!(occurrence_key("a", "bc", 0), occurrence_key("ab", "c", 0));
        assert_ne!(occurrence_key("a\0", "b", 0), occurrence_key("a", "\0b", 0));
        assert!(occurrence_key("a", "b", 1).starts_with(&instance_prefix("a")));
        assert!(!occurrence_key("ab", "b", 1).starts_with(&instance_prefix("a")));
        assert!(occurrence_key("a", "b", 1) < occurrence_key("a", "b", 256));
    }
}
