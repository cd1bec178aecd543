//! Replay tests: an instance's recorded history exported to a file
//! ([`Export`]) and replayed against the current code ([`replay`]).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{KitError, TestEngine};
use crate::engine::Engine;
use crate::error::{Error, Result, UsageError};
use crate::hooks::Hooks;
use crate::inspect::Status;
use crate::manifest::{Manifest, manifest_key};
use crate::records::{
    CheckpointRecord, CheckpointState, EventRecord, InstanceRecord, InstanceState, created_key,
    instance_key, keyed_key, occurrence_key, recoveries_value,
};
use crate::store::{Batch, MemoryStore, Store, Tree};
use crate::time::ManualClock;
use crate::workflow::{IntoWorkflow, Workflow};

/// The `format` field of every history file.
const FORMAT: &str = "durable-history";
/// The version of the history file format this build writes and reads.
const VERSION: u32 = 1;

/// One instance's recorded history, as a file: what [`replay`] replays.
///
/// The file is JSON (format version 1), one object:
///
/// | field | what |
/// | --- | --- |
/// | `format` | always `"durable-history"` |
/// | `version` | the file format's version, `1` |
/// | `instance` | the instance's id |
/// | `workflow` | the workflow's name |
/// | `manifest_hash` | the hash of the manifest the instance started with, 16 hex digits |
/// | `manifest` | that manifest (sites, their types and serde shapes), if the store had it |
/// | `record` | the instance record: `workflow`, `version`, `manifest`, `input` (the encoded input), `state`, `created_at_ms`, `transitions` |
/// | `checkpoints` | every checkpoint: `name`, `occurrence`, `key`, `declared`, `seq`, `attempts`, `started_at_ms`, `state` (the outcome, encoded) |
/// | `events` | every event sent: `name`, `seq` (its number within the name), `event` (`type_name`, `fingerprint`, `shape`, `payload`, `sent_at_ms`) |
///
/// Encoded values (input, outcomes, payloads) are arrays of bytes in the
/// store's value encoding (a versioned envelope); the records are the
/// store's own. A file of a newer format version is refused with
/// [`KitError::Format`].
///
/// ```
/// # async fn demo(kit: durable_runtime::testing::TestEngine, dir: &std::path::Path) -> Result<(), durable_runtime::testing::KitError> {
/// let export = kit.export("order-1").await?;
/// export.write_to(dir.join("order-1.json"))?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Export {
    format: String,
    version: u32,
    instance: String,
    workflow: String,
    manifest_hash: String,
    manifest: Option<Manifest>,
    record: InstanceRecord,
    checkpoints: Vec<CheckpointRecord>,
    events: Vec<ExportedEvent>,
}

/// One event in an [`Export`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExportedEvent {
    name: String,
    seq: u32,
    event: EventRecord,
}

impl Export {
    /// The history of instance `id` in `engine`'s store (any store: the
    /// embedded one, or a [`TestEngine`]'s). Reads only.
    pub async fn from_engine(engine: &Engine, id: &str) -> Result<Export> {
        Export::of(engine, id).await
    }

    pub(super) async fn of(engine: &Engine, id: &str) -> Result<Export> {
        let backend = engine.backend();
        let record = backend
            .load(id)
            .await?
            .ok_or_else(|| Error::Usage(UsageError::NotFound { id: id.to_string() }))?;
        let checkpoints = backend.checkpoints(id).await?;
        let events = backend
            .event_records(id)
            .await?
            .into_iter()
            .map(|(name, seq, event)| ExportedEvent { name, seq, event })
            .collect();
        Ok(Export {
            format: FORMAT.to_string(),
            version: VERSION,
            instance: id.to_string(),
            workflow: record.workflow.clone(),
            manifest_hash: format!("{:016x}", record.manifest),
            manifest: backend.manifest(record.manifest).await.ok().flatten(),
            record,
            checkpoints,
            events,
        })
    }

    /// The instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The workflow's name.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    /// The hash of the manifest the instance started with.
    pub fn manifest_hash(&self) -> u64 {
        self.record.manifest
    }

    /// How many checkpoints (steps, sleeps, waits) the history holds.
    pub fn checkpoints(&self) -> usize {
        self.checkpoints.len()
    }

    /// The history as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a history from JSON text.
    pub fn from_json(text: &str) -> std::result::Result<Export, KitError> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let head: Head = serde_json::from_str(text)
            .map_err(|e| KitError::Format(format!("not a durable history: {e}")))?;
        if head.format != FORMAT {
            return Err(KitError::Format(format!(
                "not a durable history (format {:?})",
                head.format
            )));
        }
        if head.version != VERSION {
            return Err(KitError::Format(format!(
                "history format version {} (this build reads version {VERSION})",
                head.version
            )));
        }
        serde_json::from_str(text)
            .map_err(|e| KitError::Format(format!("a damaged durable history: {e}")))
    }

    /// Writes the history to `path` (JSON).
    pub fn write_to(&self, path: impl AsRef<Path>) -> std::result::Result<(), KitError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()).map_err(|e| KitError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Reads a history written by [`write_to`](Self::write_to).
    pub fn read_from(path: impl AsRef<Path>) -> std::result::Result<Export, KitError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| KitError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Export::from_json(&text)
    }

    /// The history as store writes: the instance as unfinished (so that an
    /// engine opened on the store replays it), its checkpoints, events and
    /// manifest.
    fn to_store(&self) -> std::result::Result<MemoryStore, KitError> {
        fn encode<T: Serialize>(value: &T) -> std::result::Result<Vec<u8>, KitError> {
            crate::codec::encode(value)
                .map_err(|e| KitError::Format(format!("cannot encode the history: {e}")))
        }
        let id = self.instance.as_str();
        let mut batch = Batch::new();
        let mut record = self.record.clone();
        record.state = InstanceState::Running;
        batch.put(Tree::Instances, instance_key(id), encode(&record)?);
        batch.put(Tree::Active, instance_key(id), recoveries_value(0));
        batch.put(
            Tree::Created,
            created_key(record.created_at_ms, id),
            Vec::new(),
        );
        for checkpoint in &self.checkpoints {
            let key = match &checkpoint.key {
                Some((key, _)) => keyed_key(id, &checkpoint.name, key),
                None => occurrence_key(id, &checkpoint.name, checkpoint.occurrence),
            };
            batch.put(Tree::Checkpoints, key, encode(checkpoint)?);
        }
        for event in &self.events {
            batch.put(
                Tree::Events,
                occurrence_key(id, &event.name, event.seq),
                encode(&event.event)?,
            );
        }
        if let Some(manifest) = &self.manifest {
            batch.put(
                Tree::Meta,
                manifest_key(self.record.manifest),
                encode(manifest)?,
            );
        }
        let store = MemoryStore::new();
        store.apply(&[batch]).map_err(Error::from)?;
        Ok(store)
    }

    /// The latest time the history records, in clock milliseconds.
    fn latest_ms(&self) -> u64 {
        let checkpoint = |c: &CheckpointRecord| match &c.state {
            CheckpointState::Done { finished_at_ms, .. }
            | CheckpointState::Panicked { finished_at_ms, .. }
            | CheckpointState::Received { finished_at_ms, .. }
            | CheckpointState::TimedOut { finished_at_ms }
            | CheckpointState::TooLarge { finished_at_ms, .. }
            | CheckpointState::Expired { finished_at_ms, .. } => *finished_at_ms,
            CheckpointState::Sleeping { .. }
            | CheckpointState::Waiting { .. }
            | CheckpointState::Retrying { .. } => c.started_at_ms,
        };
        self.checkpoints
            .iter()
            .map(checkpoint)
            .chain(self.events.iter().map(|e| e.event.sent_at_ms))
            .chain(self.record.transitions.iter().map(|t| t.at_ms))
            .chain([self.record.created_at_ms])
            .max()
            .unwrap_or(0)
    }

    /// The labels of the steps with a final outcome, in the order they
    /// were reached.
    fn final_steps(&self) -> Vec<String> {
        let mut steps: Vec<&CheckpointRecord> = self
            .checkpoints
            .iter()
            .filter(|c| {
                matches!(
                    c.state,
                    CheckpointState::Done { .. }
                        | CheckpointState::Panicked { .. }
                        | CheckpointState::TooLarge { .. }
                )
            })
            .collect();
        steps.sort_by_key(|c| c.seq);
        steps
            .into_iter()
            .map(|c| match &c.key {
                Some((_, text)) => format!("{}[{text}]", c.name),
                None => format!("{}#{}", c.name, c.occurrence),
            })
            .collect()
    }

    fn finished(&self) -> bool {
        !matches!(
            self.record.state,
            InstanceState::Running | InstanceState::Blocked { .. }
        )
    }
}

/// Where the current code first departs from a recorded history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Divergence {
    /// The site where it departs (`name`, `name#occurrence` or
    /// `name[key]`), when known.
    pub site: Option<String>,
    /// What differs: the evolution check's message, or the replay's.
    pub message: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.site {
            Some(site) => write!(f, "at {site}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// How far a replay went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayEnd {
    /// The workflow finished on the recorded history alone.
    Finished,
    /// The workflow reached a step the history has no outcome for (the
    /// recorded instance had not got there): the history ends here.
    EndOfHistory {
        /// The step (`name#occurrence` or `name[key]`).
        next: String,
    },
    /// The workflow parked in a sleep or wait the history does not end.
    Parked,
    /// The replay stopped at a divergence.
    Diverged,
}

/// What [`replay`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The instance replayed.
    pub instance: String,
    /// The steps replayed from their recorded outcomes, in order.
    pub replayed: Vec<String>,
    /// How far the replay went.
    pub end: ReplayEnd,
    /// The first place the code departs from the history, if any.
    pub divergence: Option<Divergence>,
}

impl ReplayReport {
    /// Panics with the divergence, if there is one.
    #[track_caller]
    pub fn assert_clean(&self) {
        if let Some(divergence) = &self.divergence {
            panic!(
                "replay of instance {:?} diverged {divergence}",
                self.instance
            );
        }
    }
}

/// Replays the history in file `path` (written by [`Export::write_to`])
/// against `workflow` as compiled now, without running any step body:
/// reports the first divergence (a recorded step gone, renamed, moved or of
/// another type, with the evolution check's message; or a step the code
/// runs where the history recorded another), like Temporal's
/// `WorkflowReplayer`.
///
/// ```no_run
/// # async fn demo(order: impl durable_runtime::IntoWorkflow) {
/// let report = durable_runtime::testing::replay(order, "tests/histories/order-1.json")
///     .await
///     .unwrap();
/// report.assert_clean();
/// # }
/// ```
pub async fn replay<I: IntoWorkflow>(
    workflow: I,
    path: impl AsRef<Path>,
) -> std::result::Result<ReplayReport, KitError> {
    replay_export(workflow, &Export::read_from(path)?).await
}

/// [`replay`] of an [`Export`] in memory.
pub async fn replay_export<I: IntoWorkflow>(
    workflow: I,
    export: &Export,
) -> std::result::Result<ReplayReport, KitError> {
    let name = <I::Workflow as Workflow>::NAME;
    if export.workflow != name {
        return Err(KitError::Format(format!(
            "the history is of workflow {:?}, not {name:?}",
            export.workflow
        )));
    }
    let id = export.instance.as_str();
    let store = Arc::new(export.to_store()?);
    let hooks = Arc::new(Hooks::default());
    hooks.replay_only();
    let clock = ManualClock::new(crate::time::from_ms(export.latest_ms()));
    let kit = TestEngine::open_with(
        Engine::builder().register(workflow),
        Some(store),
        clock,
        Arc::clone(&hooks),
    )
    .await?;
    kit.run_until_idle().await;
    let status = kit.status(id).await;
    let output = kit.engine.backend().load(id).await;
    kit.shutdown().await;
    let status = status?;
    let replayed = hooks.replayed();
    let unconsumed: Vec<String> = export
        .final_steps()
        .into_iter()
        .filter(|s| !replayed.contains(s))
        .collect();
    let diverged = |site: Option<String>, message: String| ReplayReport {
        instance: id.to_string(),
        replayed: replayed.clone(),
        end: ReplayEnd::Diverged,
        divergence: Some(Divergence { site, message }),
    };
    match &status {
        Status::Incompatible { reason } => {
            return Ok(diverged(site_in(reason, id), reason.clone()));
        }
        Status::Blocked { reason }
        | Status::Failed { reason }
        | Status::NeedsAttention { reason } => {
            let site = unconsumed
                .first()
                .cloned()
                .or_else(|| hooks.past_history())
                .or_else(|| site_in(reason, id));
            return Ok(diverged(site, reason.clone()));
        }
        _ => {}
    }
    if let Some(next) = hooks.past_history() {
        if let Some(recorded) = unconsumed.first() {
            return Ok(diverged(
                Some(next.clone()),
                format!(
                    "the code runs step {next} where the history recorded step {recorded} \
                     (which the code never reached)"
                ),
            ));
        }
        if export.finished() {
            return Ok(diverged(
                Some(next.clone()),
                format!(
                    "the code runs step {next}, which the recorded (finished) instance never ran"
                ),
            ));
        }
        return Ok(ReplayReport {
            instance: id.to_string(),
            replayed,
            end: ReplayEnd::EndOfHistory { next },
            divergence: None,
        });
    }
    if let Some(recorded) = unconsumed.first() {
        return Ok(diverged(
            Some(recorded.clone()),
            format!("the history recorded step {recorded}, which the code never reached"),
        ));
    }
    let end = match status {
        Status::Completed { .. } => {
            let now = output?.map(|r| r.state);
            if let (
                Some(InstanceState::Returned { output: now, .. }),
                InstanceState::Returned { output: then, .. },
            ) = (&now, &export.record.state)
                && now != then
            {
                return Ok(diverged(
                    None,
                    "the workflow returns another output than the recorded one".to_string(),
                ));
            }
            ReplayEnd::Finished
        }
        _ => ReplayEnd::Parked,
    };
    Ok(ReplayReport {
        instance: id.to_string(),
        replayed,
        end,
        divergence: None,
    })
}

/// The site a message names: the first name in backquotes (the evolution
/// check's style), or else the first in double quotes that is not the
/// instance's id.
fn site_in(message: &str, id: &str) -> Option<String> {
    let quoted = |q: char| {
        message
            .split(q)
            .skip(1)
            .step_by(2)
            .find(|s| *s != id)
            .map(str::to_string)
    };
    quoted('`').or_else(|| quoted('"'))
}
