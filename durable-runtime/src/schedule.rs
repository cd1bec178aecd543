//! The public types of schedules and debouncing: [`Schedule`] (a cron
//! expression, a name and a [`Missed`] policy) and the [`Tick`] a scheduled
//! workflow gets as its input; [`Debounce`] (a window and an optional
//! longest wait). The engine's methods are
//! [`Engine::add_schedule`](crate::Engine::add_schedule),
//! [`Engine::debounce`](crate::Engine::debounce) and their neighbours.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cron::Cron;
use crate::error::{Error, Result, UsageError};

/// What a schedule does with ticks that passed while no engine fired them
/// (every engine was down, or they came due while it was busy). The
/// default is [`Missed::Skip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Missed {
    /// Ticks older than the schedule's grace (one minute unless set with
    /// [`Schedule::grace`]) are not run; a tick found due within its grace
    /// runs. The default.
    #[default]
    Skip,
    /// Only the latest tick that passed runs, however old.
    RunLatest,
    /// Every tick that passed runs, oldest first.
    RunAll,
}

impl Missed {
    pub(crate) fn code(self) -> u8 {
        match self {
            Missed::Skip => 0,
            Missed::RunLatest => 1,
            Missed::RunAll => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Missed {
        match code {
            1 => Missed::RunLatest,
            2 => Missed::RunAll,
            _ => Missed::Skip,
        }
    }
}

/// The input of a scheduled workflow: which schedule ticked, and when.
///
/// A workflow started by a schedule takes `Tick` as its input:
///
/// ```text
/// #[durable]
/// async fn nightly_report(ctx: &Ctx, tick: Tick) -> Result<(), String> { ... }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// The schedule's name.
    pub schedule: String,
    /// The tick's time: milliseconds since the Unix epoch (UTC).
    pub at_ms: u64,
}

impl Tick {
    /// The tick's time.
    pub fn at(&self) -> SystemTime {
        crate::time::from_ms(self.at_ms)
    }
}

/// A schedule: start an instance of a workflow at every tick of a cron
/// expression (UTC), exactly once per tick across every engine of the
/// store and across restarts. The instance of the tick at `t` has the id
/// `sched:{name}:{t in ms since the epoch}` and the input [`Tick`].
///
/// ```
/// use durable_runtime::{Missed, Schedule};
///
/// let nightly = Schedule::new("nightly", "0 3 * * *").unwrap().missed(Missed::RunLatest);
/// assert_eq!(nightly.name(), "nightly");
/// assert!(Schedule::new("bad", "0 25 * * *").is_err()); // UsageError::InvalidCron
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    pub(crate) name: String,
    pub(crate) cron: Cron,
    pub(crate) missed: Missed,
    pub(crate) grace: Duration,
}

/// A schedule's grace unless set: one minute.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

impl Schedule {
    /// A schedule named `name` that ticks at `cron` (see
    /// [`cron`](crate::cron) for the syntax). Errors:
    /// [`UsageError::InvalidCron`], [`UsageError::InvalidId`] for an empty
    /// or too long name.
    pub fn new(name: impl Into<String>, cron: &str) -> Result<Schedule> {
        let name = name.into();
        check_name(&name)?;
        let cron = Cron::parse(cron).map_err(|error| {
            Error::Usage(UsageError::InvalidCron {
                expression: cron.chars().take(200).collect(),
                error,
            })
        })?;
        Ok(Schedule {
            name,
            cron,
            missed: Missed::Skip,
            grace: DEFAULT_GRACE,
        })
    }

    /// What to do with ticks that passed unfired (default [`Missed::Skip`]).
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// How late a tick may still start under [`Missed::Skip`] (default one
    /// minute).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schedule's cron expression.
    pub fn cron(&self) -> &Cron {
        &self.cron
    }
}

/// Schedule names and debounce keys become part of instance ids: at most
/// this many bytes, so that the id with its prefix and number fits.
pub(crate) const MAX_NAME_LEN: usize = crate::ids::MAX_ID_LEN - 64;

/// [`UsageError::InvalidId`] for an empty or too long schedule name or
/// debounce key.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "a schedule name or debounce key may be at most 960 bytes"
    } else {
        return Ok(());
    };
    Err(Error::Usage(UsageError::InvalidId {
        id: name.chars().take(64).collect(),
        reason,
    }))
}

/// A schedule as stored, for [`Engine::schedules`](crate::Engine::schedules).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule's name.
    pub name: String,
    /// The workflow it starts.
    pub workflow: String,
    /// Its cron expression.
    pub cron: String,
    /// What it does with missed ticks.
    pub missed: Missed,
    /// Whether it is paused (no tick fires while it is).
    pub paused: bool,
    /// The latest tick it has passed (fired or skipped), in ms since the
    /// epoch; at first, when it was added.
    pub last_tick_ms: u64,
    /// Its next tick after that, in ms since the epoch.
    pub next_tick_ms: Option<u64>,
}

/// How [`Engine::debounce`](crate::Engine::debounce) waits: start the
/// workflow once no call came for `window`, with the last call's input;
/// with [`max_wait`](Debounce::max_wait), at the latest that long after the
/// first call of the burst.
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::Debounce;
///
/// let d = Debounce::new(Duration::from_secs(5)).max_wait(Duration::from_secs(60));
/// # drop(d);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    pub(crate) window: Duration,
    pub(crate) max_wait: Option<Duration>,
}

impl Debounce {
    /// Starts once no call came for `window`.
    pub fn new(window: Duration) -> Debounce {
        Debounce {
            window,
            max_wait: None,
        }
    }

    /// Starts at the latest `max_wait` after the first call of a burst,
    /// even if calls keep coming.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }
}
