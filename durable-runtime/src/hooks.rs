//! The test kit's hooks into the step path (feature `testing`): step mocks,
//! body counters, planned crashes around a step's checkpoint and the end of
//! a replayed history. A leaf: the services hold it, the kit fills it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;

use crate::records::{At, CheckpointRecord, CheckpointState};

/// Where, around a step's checkpoint, a planned crash happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashMoment {
    /// The step's body ran; its outcome is not checkpointed yet.
    BeforeCheckpoint,
    /// The step's outcome was just checkpointed (durably); nothing after it
    /// ran.
    AfterCheckpoint,
}

impl std::fmt::Display for CrashMoment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CrashMoment::BeforeCheckpoint => "after the body, before the checkpoint",
            CrashMoment::AfterCheckpoint => "right after the checkpoint",
        })
    }
}

/// A crash planned at one site.
pub(crate) struct CrashPlan {
    /// The index of the site (its final checkpoint) among the instance's.
    pub site: usize,
    pub moment: CrashMoment,
    /// What the crash does (snapshot the store, or kill the process) before
    /// the engine stops.
    pub crash: Arc<dyn Fn() + Send + Sync>,
}

type BodyWatch = Box<dyn Fn(&str) + Send + Sync>;

/// Step mocks and body counters, shared by a test kit engine and its steps.
#[derive(Default)]
pub(crate) struct Hooks {
    /// Step name → (fingerprint of its `Result<T, E>`, the encoded outcome).
    mocks: Mutex<HashMap<String, (u64, Vec<u8>)>>,
    /// Step name → how many times a real body ran.
    runs: Mutex<HashMap<String, u32>>,
    /// Site label (`name#occurrence`, `name[key]`) → real body runs.
    site_runs: Mutex<HashMap<String, u32>>,
    /// Labels of the sites whose final outcome reached its checkpoint
    /// write, in order.
    sites: Mutex<Vec<String>>,
    /// Labels of the steps replayed from a checkpoint, in order.
    replayed: Mutex<Vec<String>>,
    /// Sees each real body run, by site label.
    body_watch: Mutex<Option<BodyWatch>>,
    plan: Mutex<Option<CrashPlan>>,
    /// Replaying a recorded history: a step with no checkpoint does not run
    /// its body; the replay has reached the end of the history.
    replay_only: AtomicBool,
    /// The first site past the end of a replayed history.
    past_history: Mutex<Option<String>>,
    /// Crashed (or past the history): no body starts and no step finishes.
    stopped: AtomicBool,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("stopped", &self.stopped.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// The label of a step site: `name#occurrence`, or `name[key]` for a keyed
/// step.
pub(crate) fn label(name: &str, at: &At) -> String {
    match at {
        At::Occurrence(n) => format!("{name}#{n}"),
        At::Key(_, text) => format!("{name}[{text}]"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hooks {
    /// The mocked outcome of step `name`, decoded, if one was set; `Err`
    /// when the mock's types are not the step's (a step called through
    /// `ctx.step` from a helper fn, which the manifest cannot check).
    pub(crate) fn mock<T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        name: &str,
        fingerprint: u64,
    ) -> Option<std::result::Result<std::result::Result<T, E>, String>> {
        let mocks = lock(&self.mocks);
        let (written, bytes) = mocks.get(name)?;
        if *written != fingerprint {
            return Some(Err(
                "the test kit's mock of this step has other types than the step".into(),
            ));
        }
        Some(crate::journal::decode_value(bytes))
    }

    /// Sets the encoded outcome (with its types' fingerprint) of step `name`.
    pub(crate) fn set_mock(&self, name: &str, fingerprint: u64, bytes: Vec<u8>) {
        lock(&self.mocks).insert(name.to_string(), (fingerprint, bytes));
    }

    /// How many times step `name`'s real body ran.
    pub(crate) fn runs(&self, name: &str) -> u32 {
        lock(&self.runs).get(name).copied().unwrap_or(0)
    }

    /// Real body runs by site label.
    pub(crate) fn site_runs(&self) -> HashMap<String, u32> {
        lock(&self.site_runs).clone()
    }

    /// The labels of the sites whose final outcome reached its checkpoint
    /// write, in order.
    pub(crate) fn sites(&self) -> Vec<String> {
        lock(&self.sites).clone()
    }

    /// The labels of the steps replayed from their checkpoints, in order.
    pub(crate) fn replayed(&self) -> Vec<String> {
        lock(&self.replayed).clone()
    }

    /// The first step past the end of a replayed history, if one was reached.
    pub(crate) fn past_history(&self) -> Option<String> {
        lock(&self.past_history).clone()
    }

    /// Whether a planned crash happened (or a replay went past its history).
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Plans a crash.
    pub(crate) fn plan(&self, plan: CrashPlan) {
        *lock(&self.plan) = Some(plan);
    }

    /// Lets `watch` see every real body run, by site label.
    pub(crate) fn watch_bodies(&self, watch: BodyWatch) {
        *lock(&self.body_watch) = Some(watch);
    }

    /// Replays only: a step with no checkpoint stops the instance there.
    pub(crate) fn replay_only(&self) {
        self.replay_only.store(true, Ordering::SeqCst);
    }

    /// Before a real run of step `name`'s body: counts it, or never returns
    /// if the engine has crashed or a replay has reached the end of its
    /// history.
    pub(crate) async fn before_body(&self, name: &str, at: &At) {
        if self.stopped() {
            return std::future::pending().await;
        }
        let label = label(name, at);
        if self.replay_only.load(Ordering::SeqCst) {
            lock(&self.past_history).get_or_insert(label);
            self.stopped.store(true, Ordering::SeqCst);
            return std::future::pending().await;
        }
        *lock(&self.runs).entry(name.to_string()).or_default() += 1;
        *lock(&self.site_runs).entry(label.clone()).or_default() += 1;
        if let Some(watch) = &*lock(&self.body_watch) {
            watch(&label);
        }
    }

    /// A step replayed from its checkpoint.
    pub(crate) fn on_replay(&self, name: &str, at: &At) {
        lock(&self.replayed).push(label(name, at));
    }

    /// Around the write of a step's checkpoint `record`: a planned crash at
    /// this site and moment happens here, and this never returns.
    pub(crate) async fn around_checkpoint(&self, record: &CheckpointRecord, moment: CrashMoment) {
        if self.stopped() {
            return std::future::pending().await;
        }
        if matches!(record.state, CheckpointState::Retrying { .. }) {
            return;
        }
        let label = match &record.key {
            Some((_, text)) => format!("{}[{text}]", record.name),
            None => format!("{}#{}", record.name, record.occurrence),
        };
        let index = {
            let mut sites = lock(&self.sites);
            if moment == CrashMoment::BeforeCheckpoint {
                sites.push(label.clone());
                sites.len() - 1
            } else {
                sites
                    .iter()
                    .rposition(|s| *s == label)
                    .unwrap_or(sites.len())
            }
        };
        let crash = lock(&self.plan)
            .as_ref()
            .filter(|p| p.site == index && p.moment == moment)
            .map(|p| Arc::clone(&p.crash));
        if let Some(crash) = crash {
            self.stopped.store(true, Ordering::SeqCst);
            crash();
            std::future::pending::<()>().await;
        }
    }
}
