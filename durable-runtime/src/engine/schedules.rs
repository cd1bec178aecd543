//! Cron schedules: stored in the backend's `Schedules` table (one record
//! per name), changed by read-modify-writes under the row's lock, and fired
//! by the flow loop of every engine that registers the workflow.
//!
//! Exactly once per tick: the instance of the tick at `t` has the id
//! `sched:{name}:{t}`, so a create-if-absent decides among engines and
//! across restarts; the schedule's last tick moves forward only after its
//! instances were recorded (a crash in between fires the same ids again,
//! which attach).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::{Change, Table};
use crate::cron::Cron;
use crate::error::{Error, Result, StoreError, UsageError};
use crate::schedule::{Missed, Schedule, ScheduleInfo, Tick, check_name};
use crate::workflow::{IntoWorkflow, Workflow};

use super::handle::Handle;
use super::instances::{Birth, Run};
use super::{Core, Engine};

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ScheduleRecord {
    workflow: String,
    cron: String,
    missed: u8,
    grace_ms: u64,
    paused: bool,
    /// The latest tick passed (fired or skipped); at first, when added.
    last_tick_ms: u64,
    created_ms: u64,
}

/// The most ticks one round fires for one schedule ([`Missed::RunAll`]
/// after a long outage goes on in the next round).
const MAX_TICKS_PER_ROUND: usize = 1_000;

/// A day in milliseconds.
const DAY_MS: u64 = 86_400_000;

pub(super) fn encode_row<T: Serialize>(value: &T, key: &str) -> Result<Vec<u8>> {
    crate::codec::encode(value).map_err(|reason| {
        Error::Replay(crate::error::ReplayError::Encode {
            instance: key.to_string(),
            what: "a schedule or debounce record".to_string(),
            reason,
        })
    })
}

pub(super) fn decode_row<T: serde::de::DeserializeOwned>(bytes: &[u8], key: &str) -> Result<T> {
    crate::codec::decode(bytes).map_err(|e| {
        Error::Store(StoreError::decode(
            format!("schedule or debounce {key:?}"),
            e,
        ))
    })
}

fn no_such(name: &str) -> Error {
    Error::Usage(UsageError::NoSuchSchedule {
        name: name.to_string(),
    })
}

impl Engine {
    /// Adds schedule `schedule` of `workflow`, durably: from now on, each
    /// tick of its cron expression (UTC, on the engine's clock) starts one
    /// instance of `workflow` with id `sched:{name}:{tick in ms}` and
    /// input [`Tick`], exactly once across every engine of the store and
    /// across restarts. Ticks that pass while no engine runs are handled
    /// per its [`Missed`] policy.
    ///
    /// Adding a schedule that exists with the same definition does nothing
    /// (every worker may add its schedules at start-up); with another
    /// workflow, expression or policy it replaces the definition and keeps
    /// its last tick and its pause. Ticks fire on engines that register the
    /// workflow.
    ///
    /// ```
    /// # async fn demo<W>(engine: durable_runtime::Engine, report: W) -> durable_runtime::Result<()>
    /// # where W: durable_runtime::IntoWorkflow, W::Workflow: durable_runtime::Workflow<Input = durable_runtime::Tick> {
    /// use durable_runtime::{Missed, Schedule};
    ///
    /// engine.add_schedule(report, Schedule::new("nightly", "0 3 * * *")?.missed(Missed::RunLatest)).await?;
    /// engine.pause_schedule("nightly").await?;
    /// engine.resume_schedule("nightly").await?;
    /// for s in engine.schedules().await? {
    ///     println!("{} {} next at {:?}", s.name, s.cron, s.next_tick_ms);
    /// }
    /// engine.remove_schedule("nightly").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add_schedule<I>(&self, workflow: I, schedule: Schedule) -> Result<()>
    where
        I: IntoWorkflow,
        I::Workflow: Workflow<Input = Tick>,
    {
        let _ = self.to_start(workflow).await?;
        let now = self.core.services.clock.now_ms();
        let name = schedule.name.clone();
        let fresh = ScheduleRecord {
            workflow: <I::Workflow as Workflow>::NAME.to_string(),
            cron: schedule.cron.as_str().to_string(),
            missed: schedule.missed.code(),
            grace_ms: crate::time::duration_ms(schedule.grace),
            paused: false,
            last_tick_ms: now,
            created_ms: now,
        };
        let decide = |current: Option<&[u8]>| -> Result<Change> {
            let Some(bytes) = current else {
                return Ok(Change::Put(encode_row(&fresh, &name)?));
            };
            let old: ScheduleRecord = decode_row(bytes, &name)?;
            let new = ScheduleRecord {
                paused: old.paused,
                last_tick_ms: old.last_tick_ms,
                created_ms: old.created_ms,
                ..fresh.clone()
            };
            if new == old {
                Ok(Change::Keep)
            } else {
                Ok(Change::Put(encode_row(&new, &name)?))
            }
        };
        self.core
            .services
            .backend
            .update_row(Table::Schedules, &name, &decide)
            .await?;
        self.core.ring_flow();
        Ok(())
    }

    /// Pauses schedule `name`: no tick fires until it is resumed, and the
    /// ticks that pass meanwhile never fire. Pausing a paused schedule does
    /// nothing. [`UsageError::NoSuchSchedule`] if there is none.
    pub async fn pause_schedule(&self, name: &str) -> Result<()> {
        self.change_schedule(name, |mut r, _| {
            r.paused = true;
            r
        })
        .await
    }

    /// Resumes paused schedule `name`: its next tick after now fires (the
    /// ticks that passed while it was paused do not). Resuming a running
    /// schedule does nothing. [`UsageError::NoSuchSchedule`] if there is
    /// none.
    pub async fn resume_schedule(&self, name: &str) -> Result<()> {
        self.change_schedule(name, |mut r, now| {
            if r.paused {
                r.paused = false;
                r.last_tick_ms = r.last_tick_ms.max(now);
            }
            r
        })
        .await
    }

    /// Removes schedule `name` durably: no tick of it fires any more
    /// (instances it started are not touched).
    /// [`UsageError::NoSuchSchedule`] if there is none.
    pub async fn remove_schedule(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let decide = |current: Option<&[u8]>| match current {
            Some(_) => Ok(Change::Delete),
            None => Err(no_such(name)),
        };
        self.core
            .services
            .backend
            .update_row(Table::Schedules, name, &decide)
            .await?;
        Ok(())
    }

    /// Every schedule of the store, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        let rows = self.core.services.backend.rows(Table::Schedules).await?;
        rows.into_iter()
            .map(|(name, bytes)| {
                let r: ScheduleRecord = decode_row(&bytes, &name)?;
                let next = Cron::parse(&r.cron)
                    .ok()
                    .and_then(|c| c.next_after(r.last_tick_ms));
                Ok(ScheduleInfo {
                    name,
                    workflow: r.workflow,
                    cron: r.cron,
                    missed: Missed::from_code(r.missed),
                    paused: r.paused,
                    last_tick_ms: r.last_tick_ms,
                    next_tick_ms: next,
                })
            })
            .collect()
    }

    async fn change_schedule(
        &self,
        name: &str,
        change: impl Fn(ScheduleRecord, u64) -> ScheduleRecord + Send + Sync,
    ) -> Result<()> {
        check_name(name)?;
        let now = self.core.services.clock.now_ms();
        let decide = |current: Option<&[u8]>| -> Result<Change> {
            let bytes = current.ok_or_else(|| no_such(name))?;
            let old: ScheduleRecord = decode_row(bytes, name)?;
            let new = change(old.clone(), now);
            if new == old {
                Ok(Change::Keep)
            } else {
                Ok(Change::Put(encode_row(&new, name)?))
            }
        };
        self.core
            .services
            .backend
            .update_row(Table::Schedules, name, &decide)
            .await?;
        self.core.ring_flow();
        Ok(())
    }
}

/// The latest tick of `cron` in `(after, now]`, if any.
fn latest_due(cron: &Cron, after: u64, now: u64) -> Option<u64> {
    // Look in the last day first: a frequent schedule has its latest tick
    // there, and a long outage is not walked tick by tick.
    let recent = after.max(now.saturating_sub(DAY_MS));
    let walk = |from: u64| {
        let mut latest = None;
        let mut t = from;
        while let Some(next) = cron.next_after(t).filter(|n| *n <= now) {
            latest = Some(next);
            t = next;
        }
        latest
    };
    walk(recent).or_else(|| if recent > after { walk(after) } else { None })
}

/// The ticks to fire now and the tick the schedule has passed after them.
fn due_ticks(r: &ScheduleRecord, cron: &Cron, now: u64) -> (Vec<u64>, u64) {
    match Missed::from_code(r.missed) {
        Missed::RunAll => {
            let mut ticks = Vec::new();
            let mut t = r.last_tick_ms;
            while ticks.len() < MAX_TICKS_PER_ROUND {
                match cron.next_after(t).filter(|n| *n <= now) {
                    Some(n) => {
                        ticks.push(n);
                        t = n;
                    }
                    None => break,
                }
            }
            (ticks, t)
        }
        policy => match latest_due(cron, r.last_tick_ms, now) {
            None => (Vec::new(), r.last_tick_ms),
            Some(latest) => {
                let on_time = now.saturating_sub(latest) <= r.grace_ms;
                let fire = policy == Missed::RunLatest || on_time;
                (if fire { vec![latest] } else { Vec::new() }, latest)
            }
        },
    }
}

impl Core {
    /// Fires every tick that is due of every schedule whose workflow is
    /// registered here; returns when the next tick is due.
    pub(super) async fn fire_schedules(self: &Arc<Self>, now: u64) -> Result<Option<u64>> {
        let rows = self.services.backend.rows(Table::Schedules).await?;
        let mut next: Option<u64> = None;
        for (name, bytes) in rows {
            let r: ScheduleRecord = match decode_row(&bytes, &name) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(durable.schedule = %name, durable.error = %e, "schedule not read");
                    continue;
                }
            };
            let (Ok(cron), false) = (Cron::parse(&r.cron), r.paused) else {
                continue;
            };
            let Some((workflow, erased)) = self.registry.named(&r.workflow, None) else {
                continue;
            };
            let (ticks, passed) = due_ticks(&r, &cron, now);
            let mut reached = r.last_tick_ms;
            let mut stopped = false;
            for t in ticks {
                match self.fire_tick(&name, workflow, &erased, t).await {
                    Ok(()) => reached = t,
                    Err(e) => {
                        // Not passed: the next round tries this tick again.
                        tracing::warn!(durable.schedule = %name, durable.error = %e, "a schedule tick could not start");
                        stopped = true;
                        break;
                    }
                }
            }
            let passed = if stopped {
                reached
            } else {
                passed.max(reached)
            };
            if passed > r.last_tick_ms {
                self.advance_schedule(&name, passed).await?;
            }
            if let Some(n) = cron.next_after(passed) {
                next = Some(next.map_or(n, |m| m.min(n)));
            }
        }
        Ok(next)
    }

    /// Starts (or attaches to) the instance of tick `t` of schedule `name`.
    async fn fire_tick(
        self: &Arc<Self>,
        name: &str,
        workflow: &'static str,
        erased: &Arc<dyn super::registry::Erased>,
        t: u64,
    ) -> Result<()> {
        let id = format!("sched:{name}:{t}");
        let tick = Tick {
            schedule: name.to_string(),
            at_ms: t,
        };
        let input = self.services.encode_value(&id, "input", &tick)?;
        let run = Run {
            manual: false,
            here: true,
        };
        // The workflow's own deadline counts from the tick's start.
        let birth = Birth::own(&**erased, self.services.clock.now_ms());
        let done = Arc::clone(self)
            .start_or_attach(workflow, Arc::clone(erased), id.clone(), input, run, birth)
            .await?;
        tracing::info!(durable.schedule = %name, durable.instance_id = %id, "schedule ticked");
        drop(Handle::<()>::new(id, done, self));
        Ok(())
    }

    /// Moves schedule `name`'s last tick forward to `passed` (never back;
    /// a removed schedule stays removed).
    async fn advance_schedule(&self, name: &str, passed: u64) -> Result<()> {
        let decide = |current: Option<&[u8]>| -> Result<Change> {
            let Some(bytes) = current else {
                return Ok(Change::Keep);
            };
            let mut r: ScheduleRecord = decode_row(bytes, name)?;
            if r.last_tick_ms >= passed {
                return Ok(Change::Keep);
            }
            r.last_tick_ms = passed;
            Ok(Change::Put(encode_row(&r, name)?))
        };
        self.services
            .backend
            .update_row(Table::Schedules, name, &decide)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const MIN: u64 = 60_000;

    fn record(missed: Missed, last: u64) -> ScheduleRecord {
        ScheduleRecord {
            workflow: "w".into(),
            cron: "*/5 * * * *".into(),
            missed: missed.code(),
            grace_ms: MIN,
            paused: false,
            last_tick_ms: last,
            created_ms: last,
        }
    }

    #[test]
    fn missed_ticks_follow_the_policy() {
        let cron = Cron::parse("*/5 * * * *").unwrap();
        let now = T0 + 61 * MIN; // ticks 5..60 passed; 60 is a minute late
        let (t, p) = due_ticks(&record(Missed::RunAll, T0), &cron, now);
        assert_eq!(t, (1..=12).map(|i| T0 + i * 5 * MIN).collect::<Vec<_>>());
        assert_eq!(p, T0 + 60 * MIN);
        let (t, p) = due_ticks(&record(Missed::RunLatest, T0), &cron, now);
        assert_eq!((t, p), (vec![T0 + 60 * MIN], T0 + 60 * MIN));
        let (t, p) = due_ticks(&record(Missed::Skip, T0), &cron, now);
        assert_eq!((t, p), (vec![T0 + 60 * MIN], T0 + 60 * MIN));
        // Two minutes late: skipped.
        let (t, p) = due_ticks(&record(Missed::Skip, T0), &cron, now + MIN);
        assert_eq!((t, p), (vec![], T0 + 60 * MIN));
        // Nothing due.
        let (t, p) = due_ticks(&record(Missed::Skip, T0 + 60 * MIN), &cron, now);
        assert_eq!((t, p), (vec![], T0 + 60 * MIN));
    }

    #[test]
    fn a_long_outage_is_not_walked_tick_by_tick() {
        let cron = Cron::parse("* * * * * *").unwrap();
        let now = T0 + 400 * 86_400_000;
        assert_eq!(latest_due(&cron, T0, now), Some(now));
        let yearly = Cron::parse("0 0 1 1 *").unwrap();
        assert_eq!(latest_due(&yearly, T0, now), Some(T0 + 365 * 86_400_000));
    }
}
