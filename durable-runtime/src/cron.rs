//! Cron expressions, in UTC: when a [schedule](crate::Schedule) ticks.
//!
//! Five fields, `minute hour day-of-month month day-of-week`, or six with a
//! leading `second` field. Each field is `*`, a number, a range `a-b`, a
//! step `*/n` or `a-b/n` (or `a/n`: from `a` to the field's end), or a
//! comma-separated list of those. Day of week is 0–7 (0 and 7 are Sunday).
//! As in classic cron, when both day of month and day of week are
//! restricted (neither is `*`), a day matches if either matches.
//!
//! ```
//! use durable_runtime::cron::Cron;
//!
//! let every_five = Cron::parse("*/5 * * * *").unwrap();
//! // 2026-01-01T00:03:00Z → 00:05:00Z.
//! let t = 1_767_225_780_000;
//! assert_eq!(every_five.next_after(t), Some(t + 120_000));
//! assert!(Cron::parse("61 * * * *").is_err());
//! ```

use std::fmt;

/// Why a cron expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// Not five or six whitespace-separated fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), found {found}"
    )]
    FieldCount {
        /// How many fields there were.
        found: usize,
    },
    /// A field is not made of numbers, `*`, `-`, `/` and `,`.
    #[error("{field} field {text:?}: {reason}")]
    Syntax {
        /// Which field: `minute`, `hour`, …
        field: &'static str,
        /// The field's text.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A number outside the field's range.
    #[error("{field} field: {value} is outside {min}-{max}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// The number given.
        value: u32,
        /// The field's smallest value.
        min: u32,
        /// The field's largest value.
        max: u32,
    },
    /// The expression can never match (e.g. `0 0 31 2 *`).
    #[error("the expression never matches a date")]
    Never,
}

/// A parsed cron expression (see the [module docs](self)).
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month and day of week both restricted: either matches.
    either_day: bool,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.text)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Cron {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Cron, CronError> {
        Cron::parse(s)
    }
}

/// One field: its name and range.
struct Field(&'static str, u32, u32);

const SECOND: Field = Field("second", 0, 59);
const MINUTE: Field = Field("minute", 0, 59);
const HOUR: Field = Field("hour", 0, 23);
const DAY: Field = Field("day-of-month", 1, 31);
const MONTH: Field = Field("month", 1, 12);
const WEEKDAY: Field = Field("day-of-week", 0, 7);

/// How far ahead [`Cron::next_after`] looks (a match must come within).
const HORIZON_DAYS: i64 = 366 * 28;

impl Cron {
    /// Parses `text` (see the [module docs](self)).
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (sec, rest) = match parts.len() {
            5 => ("0", &parts[..]),
            6 => (parts[0], &parts[1..]),
            found => return Err(CronError::FieldCount { found }),
        };
        let mut weekdays = field(rest[4], &WEEKDAY)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        let cron = Cron {
            text: parts.join(" "),
            seconds: field(sec, &SECOND)?,
            minutes: field(rest[0], &MINUTE)?,
            hours: field(rest[1], &HOUR)?,
            days: field(rest[2], &DAY)?,
            months: field(rest[3], &MONTH)?,
            weekdays,
            either_day: rest[2] != "*" && rest[4] != "*",
        };
        if cron.next_after(0).is_none() {
            return Err(CronError::Never);
        }
        Ok(cron)
    }

    /// The expression as given (fields separated by one space).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time the expression matches strictly after `after_ms`
    /// (milliseconds since the Unix epoch, UTC), in milliseconds; `None`
    /// if none within 28 years.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let start = after_ms / 1000 + 1;
        let mut day = i64::try_from(start / 86_400).ok()?;
        let mut secs = start % 86_400;
        let last = day + HORIZON_DAYS;
        while day <= last {
            let (_, month, dom) = civil(day);
            let dow = (day + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
            if self.months & (1 << month) != 0
                && self.day_matches(dom, dow)
                && let Some(s) = self.time_of_day(secs)
            {
                let at = u64::try_from(day).ok()? * 86_400 + s;
                return at.checked_mul(1000);
            }
            day += 1;
            secs = 0;
        }
        None
    }

    fn day_matches(&self, dom: u32, dow: u32) -> bool {
        let d = self.days & (1 << dom) != 0;
        let w = self.weekdays & (1 << dow) != 0;
        if self.either_day { d || w } else { d && w }
    }

    /// The first second of the day at or after `from` that matches.
    fn time_of_day(&self, from: u64) -> Option<u64> {
        let (h0, m0, s0) = (from / 3600, from / 60 % 60, from % 60);
        for h in h0..24 {
            if self.hours & (1 << h) == 0 {
                continue;
            }
            let mstart = if h == h0 { m0 } else { 0 };
            for m in mstart..60 {
                if self.minutes & (1 << m) == 0 {
                    continue;
                }
                let sstart = if h == h0 && m == m0 { s0 } else { 0 };
                if let Some(s) = (sstart..60).find(|s| self.seconds & (1 << s) != 0) {
                    return Some(h * 3600 + m * 60 + s);
                }
            }
        }
        None
    }
}

/// The bit set of one field's text.
fn field(text: &str, f: &Field) -> Result<u64, CronError> {
    let Field(name, min, max) = *f;
    let syntax = |reason| CronError::Syntax {
        field: name,
        text: text.to_string(),
        reason,
    };
    let number = |s: &str| -> Result<u32, CronError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax("expected a number"));
        }
        let value: u32 = s.parse().map_err(|_| syntax("number too large"))?;
        if value < min || value > max {
            return Err(CronError::OutOfRange {
                field: name,
                value,
                min,
                max,
            });
        }
        Ok(value)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax("a step must be a positive number"));
                }
                let step: u32 = s.parse().map_err(|_| syntax("step too large"))?;
                if step == 0 {
                    return Err(syntax("a step must be a positive number"));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(syntax("a range must go from low to high"));
            }
            (a, b)
        } else {
            let a = number(range)?;
            (a, if step.is_some() { max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

/// (year, month 1-12, day 1-31) of day `z` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z, a Thursday.
    const T0: u64 = 1_767_225_600_000;
    const MIN: u64 = 60_000;
    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 86_400_000;

    fn next(expr: &str, after: u64) -> u64 {
        Cron::parse(expr).unwrap().next_after(after).unwrap()
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_454), (2026, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn steps_ranges_and_lists() {
        assert_eq!(next("* * * * *", T0), T0 + MIN);
        assert_eq!(next("* * * * *", T0 + 1), T0 + MIN);
        assert_eq!(next("*/15 * * * *", T0 + MIN), T0 + 15 * MIN);
        assert_eq!(next("10-20/5 * * * *", T0 + 16 * MIN), T0 + 20 * MIN);
        assert_eq!(next("10-20/5 * * * *", T0 + 20 * MIN), T0 + HOUR + 10 * MIN);
        assert_eq!(next("5,50 * * * *", T0 + 6 * MIN), T0 + 50 * MIN);
        assert_eq!(next("0 9 * * *", T0), T0 + 9 * HOUR);
        assert_eq!(
            next("30 9-17/4 * * *", T0 + 10 * HOUR),
            T0 + 13 * HOUR + 30 * MIN
        );
        assert_eq!(next("5/20 * * * *", T0 + 6 * MIN), T0 + 25 * MIN);
    }

    #[test]
    fn seconds_field() {
        assert_eq!(next("*/10 * * * * *", T0), T0 + 10_000);
        assert_eq!(next("30 0 * * * *", T0), T0 + 30_000);
        assert_eq!(next("30 0 * * * *", T0 + 30_000), T0 + HOUR + 30_000);
    }

    #[test]
    fn days_months_and_weekdays() {
        // Mondays at midnight: 2026-01-05.
        assert_eq!(next("0 0 * * 1", T0), T0 + 4 * DAY);
        // Sunday as 7 and as 0: 2026-01-04.
        assert_eq!(next("0 0 * * 7", T0), T0 + 3 * DAY);
        assert_eq!(next("0 0 * * 0", T0), T0 + 3 * DAY);
        // The 1st of March 2026.
        assert_eq!(next("0 0 1 3 *", T0), T0 + (31 + 28) * DAY);
        // Day of month or day of week: the 15th, or a Monday (the 5th first).
        assert_eq!(next("0 0 15 * 1", T0), T0 + 4 * DAY);
        // Feb 29th: 2028.
        let leap = next("0 0 29 2 *", T0);
        assert_eq!(civil((leap / DAY) as i64), (2028, 2, 29));
        // The end of the year wraps.
        assert_eq!(next("0 0 1 1 *", T0), T0 + 365 * DAY);
    }

    #[test]
    fn bad_expressions_are_typed_errors() {
        assert_eq!(
            Cron::parse("* * * *"),
            Err(CronError::FieldCount { found: 4 })
        );
        assert!(matches!(
            Cron::parse("60 * * * *"),
            Err(CronError::OutOfRange {
                field: "minute",
                value: 60,
                ..
            })
        ));
        assert!(matches!(
            Cron::parse("* 24 * * *"),
            Err(CronError::OutOfRange { field: "hour", .. })
        ));
        assert!(matches!(
            Cron::parse("* * 0 * *"),
            Err(CronError::OutOfRange {
                field: "day-of-month",
                ..
            })
        ));
        for bad in [
            "*/0 * * * *",
            "a * * * *",
            "5-1 * * * *",
            "1,,2 * * * *",
            "*/ * * * *",
            "-1 * * * *",
        ] {
            assert!(
                matches!(Cron::parse(bad), Err(CronError::Syntax { .. })),
                "{bad}: {:?}",
                Cron::parse(bad)
            );
        }
        assert_eq!(Cron::parse("0 0 31 2 *"), Err(CronError::Never));
        assert_eq!(Cron::parse("0 0 30 2 *"), Err(CronError::Never));
    }

    #[test]
    fn display_keeps_the_expression() {
        let c = Cron::parse("  */5   * * * * ").unwrap();
        assert_eq!(c.to_string(), "*/5 * * * *");
    }
}
