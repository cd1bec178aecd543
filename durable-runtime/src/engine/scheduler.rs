//! Parking and the claim loop. An instance blocked only in sleeps and
//! waits parks: the backend records what it waits for and releases it, and
//! its task ends. The claim loop asks the backend for work that is due (a
//! timer, an arrived event, an unowned unfinished instance), drives what it
//! claims, and follows the backend's wake-up hints. Recovery at open is its
//! first round. Every deadline is on the engine's clock.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::backend::{ClaimKind, Committed, Lease, Notice, Round, Write};
use crate::error::Result;
use crate::records::{ParkRecord, WaitCond};

use super::Core;
use super::driver::Begin;
use super::handle::outcome_of;
use super::instances::Slot;

/// Waits ending sooner than this stay in memory instead of parking.
pub(crate) const PARK_AFTER_MS: u64 = 1_000;

/// How often, at most, a worker of a shared store looks for instances it
/// owns that none of its tasks drives (see [`Core::release_strays`]): one
/// is let go of at the second sweep that finds it, 2 to 4 s after.
const STRAY_SWEEP: Duration = Duration::from_secs(2);

/// The claim loop's task, and the lock that makes a claim round atomic for
/// the test kit's idle check.
#[derive(Default)]
pub(super) struct Scheduler {
    pub claim_task: LoopTask,
    /// The retention task (`EngineBuilder::retention`), if any.
    pub retention_task: LoopTask,
    /// The task that fires schedules and debounces (`schedules.rs`).
    pub flow_task: LoopTask,
    /// Rung when a schedule or debounce changed here: the flow loop looks
    /// again at once.
    pub flow_bell: Arc<tokio::sync::Notify>,
    /// When the flow loop has work next (clock ms; 0: now, or a change is
    /// not looked at yet), for the test kit's idle check.
    pub flow_due: std::sync::atomic::AtomicU64,
    /// Changes rung on the bell so far.
    pub flow_rings: std::sync::atomic::AtomicU64,
    /// The queue dispatch task, if queues are declared.
    pub dispatch_task: LoopTask,
    /// Held while a round takes instances out of the backend and starts
    /// them, so that an idle check never sees one in neither place.
    pub claiming: tokio::sync::Mutex<()>,
}

/// A background loop's task: aborted and awaited at shutdown.
pub(super) type LoopTask = std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>;

impl Scheduler {
    /// Stops the claim and retention loops and waits until their tasks are
    /// gone: a loop holds the engine (and so the store) while it works, and
    /// a store reopened right after shutdown must find it closed.
    pub(super) async fn stop(&self) {
        for slot in [
            &self.claim_task,
            &self.retention_task,
            &self.flow_task,
            &self.dispatch_task,
        ] {
            let task = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Core {
    /// Parks the instance on `conds`: the backend records what it waits for
    /// and releases it, unless an awaited event is already stored.
    pub(super) async fn park(
        self: &Arc<Self>,
        id: &str,
        conds: Vec<WaitCond>,
        slot: &Arc<Slot>,
        lease: Lease,
    ) -> Result<Committed> {
        let park = ParkRecord {
            parked_at_ms: self.services.clock.now_ms(),
            conds,
        };
        let waits = park.conds.len();
        let wake_at = park.conds.iter().filter_map(|c| c.deadline_ms).min();
        let committed = self
            .services
            .backend
            .commit(id, lease, Write::Park(park))
            .await?;
        if committed == Committed::Written {
            self.stop_driving(id, slot);
            tracing::debug!(
                durable.waits = waits,
                durable.wake_at_ms = wake_at,
                "instance parked"
            );
        }
        Ok(committed)
    }

    /// One claim round: claims what is due and drives it. Returns the round
    /// with its claims taken out, and how many of them were recoveries
    /// (recovery reports the first round).
    pub(super) async fn claim_round(self: &Arc<Self>) -> Result<(Round, usize)> {
        let _claiming = self.scheduler.claiming.lock().await;
        let mut round = self
            .services
            .backend
            .claim_due(self.registry.runnable(), usize::MAX)
            .await?;
        let mut recovered = 0;
        for claim in std::mem::take(&mut round.claims) {
            let id = claim.id.clone();
            let slot = self.take_slot(&claim);
            let Some(slot) = slot else {
                // Driven here already (cannot happen with an exclusive
                // claim).
                let _ = self.services.backend.release(&id, claim.lease).await;
                continue;
            };
            let begin = match claim.kind {
                ClaimKind::Wake => {
                    tracing::debug!(durable.instance_id = %id, "instance woken");
                    Begin::Wake
                }
                // Nothing stored to load: as one created here.
                #[cfg(feature = "postgres")]
                ClaimKind::Unstarted => Begin::Fresh,
                ClaimKind::Recover => Begin::Resume(Some(claim.recoveries)),
            };
            if claim.kind == ClaimKind::Recover {
                recovered += 1;
            }
            Arc::clone(self).run_claim(claim, begin, slot);
        }
        Ok((round, recovered))
    }

    /// Follows one wake-up hint about a single instance.
    async fn follow(self: &Arc<Self>, notice: Notice) {
        match notice {
            Notice::Ready | Notice::Published { .. } => {}
            Notice::Event { id, .. } => {
                if let Some(slot) = self.instances.get(&id) {
                    slot.signals.ring();
                }
            }
            Notice::Cancelled { id } => {
                // A hint can be late: the instance may have been resumed
                // since. The store says whether it is cancelled now.
                let cancelled = matches!(
                    self.services.backend.load(&id).await,
                    Ok(Some(record)) if record.state == crate::records::InstanceState::Cancelled
                );
                if cancelled && let Some(slot) = self.instances.get(&id) {
                    slot.signals.cancelled.store(true, Ordering::SeqCst);
                    slot.signals.ring();
                }
                self.resolve(&id).await;
            }
            Notice::Ended { id } => self.resolve_soon(id),
            Notice::Paused { id } => {
                if let Some(slot) = self.instances.get(&id)
                    && let Ok(Some(record)) = self.services.backend.load(&id).await
                {
                    let paused = record.paused_since().is_some();
                    slot.signals.paused.store(paused, Ordering::SeqCst);
                    slot.signals.ring();
                }
            }
        }
    }

    /// Resolves the handles of `id` if no task of this process drives it
    /// and it has an outcome (it ended elsewhere, or was cancelled).
    async fn resolve(self: &Arc<Self>, id: &str) {
        let Some(slot) = self.instances.get(id) else {
            return;
        };
        if slot.driving.active() {
            return;
        }
        if let Ok(Some(record)) = self.services.backend.load(id).await
            && let Some(outcome) = outcome_of(id, &record, false)
        {
            self.finish_slot(id, &slot, outcome);
        }
    }

    /// [`resolve`](Self::resolve) in a task of its own, if a handle here
    /// waits on `id` and no task here drives it: the loop goes on with the
    /// next hint while the outcome is read (a pure client awaiting many
    /// instances would otherwise read their outcomes one after another).
    fn resolve_soon(self: &Arc<Self>, id: String) {
        if self
            .instances
            .get(&id)
            .is_none_or(|slot| slot.driving.active())
        {
            return;
        }
        let core = Arc::downgrade(self);
        self.runtime.spawn(async move {
            if let Some(core) = core.upgrade() {
                core.resolve(&id).await;
            }
        });
    }

    /// Resolves every handle waiting on an instance no task here drives (a
    /// lost hint costs one poll).
    async fn resolve_waiting(self: &Arc<Self>) {
        let waiting: Vec<String> = self
            .instances
            .lock()
            .iter()
            .filter(|(_, s)| !s.driving.active())
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            self.resolve(&id).await;
        }
    }

    /// Lets go of the instances this worker owns on a shared store that no
    /// task here drives, seen so at two sweeps in a row under the same
    /// lease (`suspects` holds those of the last sweep). Such an instance
    /// is one whose claim or create committed while its answer was lost
    /// (the connection broke after COMMIT): the caller was told it failed,
    /// and while this worker lives nobody else would ever claim it. A
    /// start or claim takes its slot before its answer is acted on, so an
    /// instance being started or claimed here is never taken for one;
    /// letting go of one that a task drove after all costs that task its
    /// next write (`LeaseLost`), as a takeover does.
    async fn release_strays(self: &Arc<Self>, suspects: &mut HashMap<String, Lease>) {
        let owned = match self.services.backend.owned().await {
            Ok(owned) => owned,
            Err(e) => {
                tracing::debug!(durable.error = %e, "could not list the instances this worker owns");
                return;
            }
        };
        let mut next = HashMap::new();
        for (id, lease) in owned {
            if self.instances.get(&id).is_some_and(|s| s.driving.active()) {
                continue;
            }
            if suspects.get(&id) == Some(&lease) {
                tracing::warn!(
                    durable.instance_id = %id,
                    "this worker owned an instance that none of its tasks ran (the answer to its claim or create was lost); let go of it for the next claim"
                );
                if let Err(e) = self.services.backend.release(&id, lease).await {
                    tracing::debug!(durable.instance_id = %id, durable.error = %e, "could not let go of an instance");
                }
            } else {
                next.insert(id, lease);
            }
        }
        *suspects = next;
    }

    /// The claim loop: a round whenever a hint comes, a parked timer is
    /// due, or (on a shared store) the poll interval passes; until the
    /// engine is gone.
    pub(super) async fn claim_loop(core: Weak<Core>, poll: Option<Duration>) {
        let Some((mut notices, clock)) = core.upgrade().map(|c| {
            (
                c.services.backend.subscribe(),
                Arc::clone(&c.services.clock),
            )
        }) else {
            return;
        };
        // Only a hint that something may be claimable (`Notice::Ready`), a
        // due timer, a poll or lost hints start a claim round: an
        // instance's end or an event for a running owner makes nothing
        // claimable. Handles waiting on instances run elsewhere are
        // resolved by their `Ended` hints, and looked at again only at a
        // poll (each look is a read per handle).
        let (mut round, mut resolve) = (true, true);
        let mut polled_at = tokio::time::Instant::now();
        // Instances owned here and driven by no task, at the last sweep.
        let mut strays = HashMap::new();
        let mut swept_at = tokio::time::Instant::now();
        loop {
            let next = {
                let Some(core) = core.upgrade() else { return };
                if round && let Err(e) = core.claim_round().await {
                    tracing::warn!(durable.error = %e, "claim round failed; retrying at the next poll");
                }
                if resolve && poll.is_some() {
                    core.resolve_waiting().await;
                    if swept_at.elapsed() >= STRAY_SWEEP {
                        swept_at = tokio::time::Instant::now();
                        core.release_strays(&mut strays).await;
                    }
                }
                core.services.backend.next_due()
            };
            let timer = async {
                match next {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Every `poll`, however many hints came between.
            let polled = async {
                match poll {
                    Some(every) => tokio::time::sleep_until(polled_at + every).await,
                    None => std::future::pending().await,
                }
            };
            (round, resolve) = tokio::select! {
                notice = notices.recv() => match notice {
                    Ok(notice) => {
                        let Some(core) = core.upgrade() else { return };
                        let ready = matches!(notice, Notice::Ready);
                        core.follow(notice).await;
                        (ready, false)
                    }
                    Err(RecvError::Lagged(_)) => (true, true),
                    Err(RecvError::Closed) => return,
                },
                _ = timer => (true, false),
                _ = polled => {
                    polled_at = tokio::time::Instant::now();
                    (true, true)
                }
            };
        }
    }

    /// Whether no instance of this engine can make progress until the clock
    /// moves or an event is sent: nothing is due in the backend, and every
    /// live instance is parked, or blocked only in waits and backoffs none
    /// of which is due or satisfied. For the test kit.
    #[cfg(feature = "testing")]
    pub(super) async fn idle(&self) -> bool {
        let now = self.services.clock.now_ms();
        let _claiming = self.scheduler.claiming.lock().await;
        if self.scheduler.flow_due.load(Ordering::SeqCst) <= now {
            return false; // a schedule tick or debounce is due
        }
        if self.services.backend.next_due().is_some_and(|d| d <= now) {
            return false;
        }
        let slots: Vec<_> = self
            .instances
            .lock()
            .iter()
            .map(|(id, s)| (id.clone(), Arc::clone(s)))
            .collect();
        for (id, slot) in slots {
            if !slot.driving.active() {
                continue;
            }
            let waits: Vec<WaitCond> = slot
                .signals
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut arrived = Vec::new();
            for c in waits.iter().filter(|c| c.event_type.is_some()) {
                let stored = self
                    .services
                    .backend
                    .event(&id, &c.name, c.occurrence)
                    .await
                    .map_or(true, |e| e.is_some());
                if stored {
                    arrived.push((c.name.clone(), c.occurrence));
                }
            }
            let blocked = slot.signals.blocked(now, |c| {
                arrived
                    .iter()
                    .any(|(n, o)| *n == c.name && *o == c.occurrence)
            });
            if !blocked {
                return false;
            }
        }
        true
    }

    /// The earliest deadline anything waits for: a parked instance's timer,
    /// or a running instance's backoff, sleep or wait timeout (feature
    /// `testing`).
    #[cfg(feature = "testing")]
    pub(super) fn next_wake(&self) -> Option<u64> {
        let slots: Vec<_> = self.instances.lock().values().map(Arc::clone).collect();
        slots
            .iter()
            .filter_map(|slot| slot.signals.next_deadline())
            .chain(self.services.backend.next_due())
            .min()
    }
}
