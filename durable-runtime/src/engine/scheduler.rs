//! Parking and timers: an instance blocked only in sleeps and waits drops
//! its task and keeps an entry in the park table (see `park.rs`); the timer
//! task and event delivery wake it. Every deadline is on the engine's clock.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::error::Result;
use crate::records::{ParkRecord, WaitCond};

use super::Core;
use super::builder::TaskSlot;
use super::driver::Begin;
use super::instances::Slot;
use super::park::ParkTable;

/// Waits ending sooner than this stay in memory instead of parking.
pub(crate) const PARK_AFTER_MS: u64 = 1_000;

/// The park table and the timer task that wakes its instances.
#[derive(Default)]
pub(super) struct Scheduler {
    /// Parked instances; lock after `running` when both are needed.
    parked: Mutex<ParkTable>,
    /// Rung when an earlier deadline is parked.
    bell: Arc<Notify>,
    /// Held while due instances are taken out of the table and woken, so
    /// that an idle check never sees one in neither place.
    waking: Mutex<()>,
    pub timer_task: TaskSlot,
}

impl Scheduler {
    pub(super) fn table(&self) -> MutexGuard<'_, ParkTable> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_parked(&self, id: &str) -> bool {
        self.table().contains(id)
    }

    /// Takes `id` out of the park table; whether it was there.
    pub(super) fn unpark(&self, id: &str) -> bool {
        self.table().remove(id).is_some()
    }

    /// Puts `id` in the park table, its deadlines passed through `clamp`.
    pub(super) fn insert(&self, id: &str, conds: &[WaitCond], clamp: impl Fn(u64) -> u64) {
        if self.table().insert(id, conds, clamp) {
            self.bell.notify_one();
        }
    }

    /// Stops the timer task.
    pub(super) fn stop(&self) {
        if let Some(timers) = self
            .timer_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            timers.abort();
        }
    }
}

impl Core {
    /// Parks the instance on `conds`: records what it waits for, then hands
    /// it to the park table (or wakes it at once if an awaited event is there).
    pub(super) async fn park(
        self: &Arc<Self>,
        id: &str,
        conds: Vec<WaitCond>,
        slot: &Arc<Slot>,
    ) -> Result<()> {
        let park = ParkRecord {
            parked_at_ms: self.services.clock.now_ms(),
            conds,
        };
        self.services.journal.park(id, &park).await?;
        {
            let mut running = self.instances.lock();
            slot.driving.store(false, Ordering::SeqCst);
            *slot.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if slot.done.receiver_count() == 0
                && running.get(id).is_some_and(|s| Arc::ptr_eq(s, slot))
            {
                running.remove(id);
            }
        }
        if slot.signals.is_cancelled() {
            return Err(crate::error::Error::Instance(
                crate::error::InstanceError::Cancelled {
                    instance: id.to_string(),
                },
            ));
        }
        tracing::debug!(
            durable.waits = park.conds.len(),
            durable.wake_at_ms = park.conds.iter().filter_map(|c| c.deadline_ms).min(),
            "instance parked"
        );
        self.scheduler.insert(id, &park.conds, |d| d);
        self.wake_if_event_arrived(id, &park.conds)
    }

    /// Wakes parked `id` if an event one of `conds` waits for is already stored.
    pub(super) fn wake_if_event_arrived(
        self: &Arc<Self>,
        id: &str,
        conds: &[WaitCond],
    ) -> Result<()> {
        for cond in conds.iter().filter(|c| c.event_type.is_some()) {
            if self
                .services
                .journal
                .has_event(id, &cond.name, cond.occurrence)?
            {
                if self.scheduler.unpark(id) {
                    self.wake(id);
                }
                break;
            }
        }
        Ok(())
    }

    /// Starts a task for parked instance `id`, just taken out of the park table.
    pub(super) fn wake(self: &Arc<Self>, id: &str) {
        let record = match self.services.journal.load(id) {
            Ok(Some(record)) if record.state == crate::records::InstanceState::Running => record,
            _ => return,
        };
        let Some((workflow, erased)) = self.registry.for_record(&record) else {
            return;
        };
        let slot = {
            let mut running = self.instances.lock();
            let slot = running
                .entry(id.to_string())
                .or_insert_with(|| Slot::new(workflow, record.input.clone(), false));
            if slot.driving.swap(true, Ordering::SeqCst) {
                return;
            }
            Arc::clone(slot)
        };
        tracing::debug!(durable.workflow = workflow, durable.instance_id = %id, "instance woken");
        Arc::clone(self).spawn(id.to_string(), erased, record, Begin::Wake, slot);
    }

    /// Whether no instance of this engine can make progress until the clock
    /// moves or an event is sent: every live instance is parked, or blocked
    /// only in waits and backoffs none of which is due or satisfied, and no
    /// parked deadline has come. For the test kit.
    #[cfg(feature = "testing")]
    pub(super) fn idle(&self) -> bool {
        let now = self.services.clock.now_ms();
        let _waking = self
            .scheduler
            .waking
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self
            .scheduler
            .table()
            .next_deadline()
            .is_some_and(|d| d <= now)
        {
            return false;
        }
        let slots: Vec<_> = self
            .instances
            .lock()
            .iter()
            .map(|(id, s)| (id.clone(), Arc::clone(s)))
            .collect();
        slots.iter().all(|(id, slot)| {
            !slot.driving.load(Ordering::SeqCst)
                || slot.signals.blocked(now, |c| {
                    c.event_type.is_some()
                        && self
                            .services
                            .journal
                            .has_event(id, &c.name, c.occurrence)
                            .unwrap_or(true)
                })
        })
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
            .chain(self.scheduler.table().next_deadline())
            .min()
    }

    /// Wakes parked instances whose deadline has come, until the engine is gone.
    pub(super) async fn timers(core: std::sync::Weak<Core>) {
        let Some(bell) = core.upgrade().map(|c| Arc::clone(&c.scheduler.bell)) else {
            return;
        };
        loop {
            let sleep = {
                let Some(core) = core.upgrade() else { return };
                let clock = &core.services.clock;
                let _waking = core
                    .scheduler
                    .waking
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let due = core.scheduler.table().take_due(clock.now_ms());
                for id in due {
                    core.wake(&id);
                }
                let next = core.scheduler.table().next_deadline();
                next.map(|d| clock.sleep_until(d))
            };
            match sleep {
                Some(sleep) => {
                    tokio::select! {
                        _ = sleep => {}
                        _ = bell.notified() => {}
                    }
                }
                None => bell.notified().await,
            }
        }
    }
}
