//! Live instances: those running in this process, or parked with someone
//! waiting for their outcome. Starters of the same id attach to them; a
//! [`Handle`](super::Handle) (`handle.rs`) waits for the outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::backend::{Backend, Claim, Created, Lease};
use crate::context::Signals;
use crate::error::{Error, Result};
use crate::ids::check_conflict;
use crate::records::{InstanceRecord, InstanceState, TransitionKind, TransitionRecord};

use super::Core;
use super::builder::TaskSlot;
use super::driver::{Begin, DriveEnd};
use super::handle::outcome_of;
use super::registry::Erased;

/// What a finished instance returned, once it has.
pub(super) type Outcome = Option<Result<Vec<u8>>>;

/// An instance that is live in this process.
pub(super) struct Slot {
    pub workflow: &'static str,
    pub input: Vec<u8>,
    pub done: watch::Sender<Outcome>,
    pub task: TaskSlot,
    pub signals: Arc<Signals>,
    /// Whether a task of this process drives the instance now, or a
    /// starter is about to.
    pub driving: Driving,
    /// The lease the driving task holds, to let go of at shutdown.
    pub lease: Mutex<Option<Lease>>,
}

/// Who drives a live instance in this process: nobody (parked, run
/// elsewhere, or not yet claimed), a starter that reserved the slot and
/// waits for the store's decision, or a task.
///
/// Whoever holds the instance's exclusive claim drives it. A claim round
/// can win the claim a reserving starter asked for (the starter then gets
/// none): the round takes the slot over, and the starter leaves it alone.
pub(super) struct Driving(AtomicU8);

impl Driving {
    const IDLE: u8 = 0;
    const RESERVED: u8 = 1;
    const DRIVEN: u8 = 2;

    /// Reserved by a starter (`true`) or driven by nobody.
    fn new(reserved: bool) -> Driving {
        Driving(AtomicU8::new(if reserved {
            Driving::RESERVED
        } else {
            Driving::IDLE
        }))
    }

    /// Whether a task of this process drives the instance, or a starter
    /// reserved it.
    pub(super) fn active(&self) -> bool {
        self.0.load(Ordering::SeqCst) != Driving::IDLE
    }

    /// Taken by the holder of the instance's claim: `false` if a task of
    /// this process drives it already.
    pub(super) fn take(&self) -> bool {
        self.0.swap(Driving::DRIVEN, Ordering::SeqCst) != Driving::DRIVEN
    }

    /// A starter that got no claim lets the slot go, unless a claim round
    /// took it over meanwhile.
    pub(super) fn give_up(&self) {
        let _ = self.0.compare_exchange(
            Driving::RESERVED,
            Driving::IDLE,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// No task of this process drives the instance any more.
    pub(super) fn stop(&self) {
        self.0.store(Driving::IDLE, Ordering::SeqCst);
    }
}

impl Slot {
    pub(super) fn new(workflow: &'static str, input: Vec<u8>, reserved: bool) -> Arc<Slot> {
        Arc::new(Slot {
            workflow,
            input,
            done: watch::Sender::new(None),
            task: Mutex::new(None),
            signals: Arc::new(Signals::new()),
            driving: Driving::new(reserved),
            lease: Mutex::new(None),
        })
    }
}

/// The live instances of this process and the tasks driving them.
pub(super) struct Instances {
    /// Live instances by id; lock before the park table when both are needed.
    pub running: Mutex<HashMap<String, Arc<Slot>>>,
    /// Every instance task holds a clone; shutdown waits for all to drop.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    alive_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Instances {
    pub(super) fn new() -> Instances {
        let (alive, alive_rx) = mpsc::channel(1);
        Instances {
            running: Mutex::new(HashMap::new()),
            alive: Mutex::new(Some(alive)),
            alive_rx: tokio::sync::Mutex::new(alive_rx),
        }
    }

    /// The live slot of `id`, if any.
    pub(super) fn get(&self, id: &str) -> Option<Arc<Slot>> {
        self.lock().get(id).cloned()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A signal for a task that holds the engine: shutdown waits until
    /// every one is dropped. `None` once shutdown began.
    fn alive(&self) -> Option<mpsc::Sender<()>> {
        self.alive.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Aborts every instance task, waits until all have stopped, and lets
    /// go of their leases (another worker may take them at once).
    pub(super) async fn stop_all(&self, backend: &Arc<dyn Backend>) {
        let slots: Vec<(String, Arc<Slot>)> = self.lock().drain().collect();
        for (_, slot) in &slots {
            if let Some(task) = slot.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
        self.alive.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut alive_rx = self.alive_rx.lock().await;
        while alive_rx.recv().await.is_some() {}
        for (id, slot) in slots {
            let lease = slot.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(lease) = lease {
                let _ = backend.release(&id, lease).await;
            }
        }
    }
}

/// What [`Core::reserve`] found.
pub(super) enum Reserved {
    /// This process already has the instance: its outcome's receiver.
    Attached(watch::Receiver<Outcome>),
    /// A new slot, reserved for the store's decision.
    Slot(Arc<Slot>),
}

/// How a start runs what it creates or finds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    /// Resumed by hand (an instance set aside runs again).
    pub manual: bool,
    /// Run in this process (`false`: a pure client leaves it to others).
    pub here: bool,
}

/// What a new instance's record starts with besides its input.
#[derive(Debug, Default)]
pub(super) struct Birth {
    /// Its whole-workflow deadline (clock milliseconds).
    pub deadline_ms: Option<u64>,
    /// The parent that starts it as a child, and whether cancelling the
    /// parent cancels it.
    pub parent: Option<(String, bool)>,
}

impl Birth {
    /// A top-level instance with `deadline_ms`.
    pub(super) fn deadline(deadline_ms: Option<u64>) -> Birth {
        Birth {
            deadline_ms,
            parent: None,
        }
    }

    /// An instance of `erased` started now by the engine itself (a tick,
    /// a debounce, a child): the workflow's own `timeout`, if it has one,
    /// from `now_ms`.
    pub(super) fn own(erased: &dyn Erased, now_ms: u64) -> Birth {
        Birth::deadline(erased.timeout_ms().map(|t| now_ms.saturating_add(t)))
    }
}

impl Core {
    /// Starts `id` or attaches to it; returns the receiver of its outcome.
    /// With `run.here` false (a pure client of a shared store), a new
    /// instance is recorded without an owner, and an existing one only
    /// attached to: other processes run it.
    ///
    /// The store decides: a create-if-absent for a new instance, a claim to
    /// resume an unfinished one nobody runs. An instance running elsewhere
    /// or parked is attached to without a task; whoever finishes it
    /// resolves the handle.
    pub(super) async fn start_or_attach(
        self: Arc<Self>,
        workflow: &'static str,
        erased: Arc<dyn Erased>,
        id: String,
        input: Vec<u8>,
        run: Run,
        birth: Birth,
    ) -> Result<watch::Receiver<Outcome>> {
        let slot = match self.reserve(workflow, &id, &input)? {
            Reserved::Attached(done) => return Ok(done),
            Reserved::Slot(slot) => slot,
        };
        let done = slot.done.subscribe();
        let fresh = self.fresh_record(workflow, &*erased, input, birth);
        crate::crash::point("start.before_record");
        let created = if run.here {
            self.services.backend.create(&id, &fresh).await
        } else {
            let items = [(id.clone(), fresh.clone())];
            self.services
                .backend
                .create_unclaimed(&items)
                .await
                .and_then(|mut created| {
                    created.pop().ok_or_else(|| {
                        Error::Store(crate::error::StoreError::io_message(
                            "create an instance",
                            format!("no answer for instance {id:?}"),
                        ))
                    })
                })
        };
        self.settle(erased, id, fresh, slot, run, created).await?;
        Ok(done)
    }

    /// Reserves the slot of `id` before the store decides, so that
    /// starters of the same id in this process attach to it; or attaches
    /// to the slot this process already has.
    pub(super) fn reserve(
        &self,
        workflow: &'static str,
        id: &str,
        input: &[u8],
    ) -> Result<Reserved> {
        let mut running = self.instances.lock();
        if let Some(slot) = running.get(id) {
            check_conflict(id, workflow, input, slot.workflow, &slot.input)?;
            return Ok(Reserved::Attached(slot.done.subscribe()));
        }
        let slot = Slot::new(workflow, input.to_vec(), true);
        running.insert(id.to_string(), Arc::clone(&slot));
        Ok(Reserved::Slot(slot))
    }

    /// The record of a new instance of `workflow`, started now.
    pub(super) fn fresh_record(
        &self,
        workflow: &'static str,
        erased: &dyn Erased,
        input: Vec<u8>,
        birth: Birth,
    ) -> InstanceRecord {
        let now = self.services.clock.now_ms();
        let Birth {
            deadline_ms,
            parent,
        } = birth;
        InstanceRecord {
            workflow: workflow.to_string(),
            version: erased.version(),
            manifest: erased.manifest().1,
            input,
            state: InstanceState::Running,
            created_at_ms: now,
            transitions: std::iter::once(TransitionKind::Started)
                .chain(deadline_ms.map(|at_ms| TransitionKind::Deadline { at_ms }))
                .chain(parent.map(|(parent, cascade)| TransitionKind::ChildOf { parent, cascade }))
                .map(|kind| TransitionRecord { at_ms: now, kind })
                .collect(),
        }
    }

    /// Acts on what the store decided for reserved `slot` of `id`: runs a
    /// new instance (or, for a pure client, hands it to the workers),
    /// attaches to an existing one (after the conflict check), claims one
    /// nobody runs. Resolves the slot with the error if there is one.
    pub(super) async fn settle(
        self: Arc<Self>,
        erased: Arc<dyn Erased>,
        id: String,
        fresh: InstanceRecord,
        slot: Arc<Slot>,
        run: Run,
        created: Result<Created>,
    ) -> Result<()> {
        let Run { manual, here } = run;
        let backend = &self.services.backend;
        let workflow = slot.workflow;
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                self.finish_slot(&id, &slot, Err(e.clone()));
                return Err(e);
            }
        };
        let claim = match created {
            Created::New(_) | Created::Unclaimed => {
                crate::crash::point("start.after_record");
                tracing::info!(
                    durable.workflow = workflow,
                    durable.instance_id = %id,
                    "instance started"
                );
                crate::metrics::instance_started(workflow);
                match created {
                    Created::New(lease) => self.spawn(id, erased, fresh, Begin::Fresh, slot, lease),
                    // Left to the workers (a pure client's start): unowned,
                    // it is claimable at once.
                    _ => slot.driving.give_up(),
                }
                return Ok(());
            }
            Created::Exists(record) => {
                if let Err(e) =
                    check_conflict(&id, workflow, &fresh.input, &record.workflow, &record.input)
                {
                    self.finish_slot(&id, &slot, Err(e.clone()));
                    return Err(e);
                }
                if let Some(outcome) = outcome_of(&id, &record, manual) {
                    self.finish_slot(&id, &slot, outcome);
                    return Ok(());
                }
                if !here {
                    slot.driving.give_up();
                    return Ok(());
                }
                match backend.claim(&id).await {
                    Ok(claim) => claim,
                    Err(e) => {
                        self.finish_slot(&id, &slot, Err(e.clone()));
                        return Err(e);
                    }
                }
            }
        };
        let Some(claim) = claim else {
            // Parked, or claimed by another process or by a claim round of
            // this one (which then took the slot over): its end resolves
            // the slot.
            slot.driving.give_up();
            return Ok(());
        };
        if let Some(outcome) = outcome_of(&id, &claim.record, manual) {
            // It finished between the read and the claim.
            let _ = backend.release(&id, claim.lease).await;
            self.finish_slot(&id, &slot, outcome);
            return Ok(());
        }
        let begin = if manual {
            Begin::ResumeByHand
        } else {
            Begin::Resume(Some(claim.recoveries))
        };
        self.run_claim(claim, begin, slot);
        Ok(())
    }

    /// Drives claimed instance `claim` with `slot`, on the version of the
    /// workflow it started on; releases it if that version is not
    /// registered here.
    pub(super) fn run_claim(self: Arc<Self>, claim: Claim, begin: Begin, slot: Arc<Slot>) {
        let Claim {
            id, lease, record, ..
        } = claim;
        match self.registry.for_record(&record) {
            Some((_, erased)) => self.spawn(id, erased, record, begin, slot, lease),
            None => {
                let error = Error::Usage(crate::error::UsageError::NotRegistered {
                    workflow: format!("{} (version {})", record.workflow, record.version),
                });
                let alive = self.instances.alive();
                let core = Arc::clone(&self);
                self.runtime.spawn(async move {
                    // Shutdown waits for this task too (it holds the store).
                    let guard = TaskGuard {
                        core,
                        _alive: alive,
                    };
                    let _ = guard.core.services.backend.release(&id, lease).await;
                    guard.core.finish_slot(&id, &slot, Err(error));
                });
            }
        }
    }

    /// The slot of instance `claim`, taken for the task that will drive
    /// it (from a starter that reserved it, too: the claim is exclusive, so
    /// that starter got none); `None` if a task of this process drives it
    /// already.
    pub(super) fn take_slot(&self, claim: &Claim) -> Option<Arc<Slot>> {
        let mut running = self.instances.lock();
        let slot = running.entry(claim.id.clone()).or_insert_with(|| {
            let workflow = self
                .registry
                .for_record(&claim.record)
                .map_or("", |(w, _)| w);
            Slot::new(workflow, claim.record.input.clone(), false)
        });
        slot.driving.take().then(|| Arc::clone(slot))
    }

    /// Runs instance `id` on a task of its own, which holds the engine alive.
    pub(super) fn spawn(
        self: Arc<Self>,
        id: String,
        erased: Arc<dyn Erased>,
        record: InstanceRecord,
        begin: Begin,
        slot: Arc<Slot>,
        lease: Lease,
    ) {
        *slot.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
        slot.driving.take();
        let Some(alive) = self.instances.alive() else {
            self.finish_slot(
                &id,
                &slot,
                Err(Error::Instance(crate::error::InstanceError::ShutDown {
                    instance: id.clone(),
                })),
            );
            return;
        };
        let runtime = self.runtime.clone();
        let task_slot = Arc::clone(&slot);
        let task = runtime.spawn(async move {
            let guard = TaskGuard {
                core: self,
                _alive: Some(alive),
            };
            let core = &guard.core;
            match core
                .drive(&id, erased, record, begin, &task_slot, lease)
                .await
            {
                DriveEnd::Finished(outcome) => {
                    if outcome.is_err() {
                        // An end that could not be written keeps no lease.
                        let _ = core.services.backend.release(&id, lease).await;
                    }
                    core.finish_slot(&id, &task_slot, outcome);
                }
                DriveEnd::Lost => core.stop_driving(&id, &task_slot),
                DriveEnd::Parked | DriveEnd::Rerun => {}
            }
        });
        *slot.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    }

    /// Marks `slot` as driven by no task of this process (parked, or run by
    /// another), and forgets it if nobody waits for its outcome.
    pub(super) fn stop_driving(&self, id: &str, slot: &Arc<Slot>) {
        let mut running = self.instances.lock();
        slot.driving.stop();
        *slot.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
        slot.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        if slot.done.receiver_count() == 0 && running.get(id).is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            running.remove(id);
        }
    }

    /// Hands `outcome` to every handle of `slot` and forgets the slot.
    pub(super) fn finish_slot(&self, id: &str, slot: &Arc<Slot>, outcome: Result<Vec<u8>>) {
        slot.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        {
            let mut running = self.instances.lock();
            if running.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                running.remove(id);
            }
        }
        slot.done.send_replace(Some(outcome));
    }
}

/// Keeps the engine alive for a task and signals shutdown when dropped
/// (fields drop in order: the engine first, then the signal).
struct TaskGuard {
    core: Arc<Core>,
    _alive: Option<mpsc::Sender<()>>,
}
