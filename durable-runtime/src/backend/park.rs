//! Parked instances: those waiting only on a timer or an event. A parked
//! instance holds no task and no future, only an entry in [`ParkTable`]
//! (and its records in the store); a timer or an event wakes it, and the
//! engine replays it from its checkpoints.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::records::{ParkRecord, WaitCond};

/// A wait on an event, as the table keeps it. Names and types are interned:
/// thousands of instances of one workflow share them.
#[derive(Debug)]
pub(crate) struct EventWait {
    pub name: Arc<str>,
    pub occurrence: u32,
    pub type_name: Arc<str>,
}

/// What one parked instance waits for. Kept small: a process may hold
/// hundreds of thousands of these.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The earliest time it wakes by itself.
    pub deadline_ms: Option<u64>,
    /// The events any of which wakes it (almost always none or one).
    pub events: Events,
}

impl Parked {
    /// What the instance waits for, as a park record (one wait per event,
    /// each with the earliest deadline; a lone timer as one sleep).
    pub(super) fn to_record(&self) -> ParkRecord {
        let mut conds: Vec<WaitCond> = self
            .events
            .iter()
            .map(|e| WaitCond {
                name: e.name.to_string(),
                occurrence: e.occurrence,
                deadline_ms: self.deadline_ms,
                event_type: Some(e.type_name.to_string()),
            })
            .collect();
        if conds.is_empty() {
            conds.push(WaitCond {
                name: String::new(),
                occurrence: 0,
                deadline_ms: self.deadline_ms,
                event_type: None,
            });
        }
        ParkRecord {
            parked_at_ms: 0,
            conds,
        }
    }
}

/// A parked instance's event waits, without an allocation for zero or one.
#[derive(Debug)]
pub(crate) enum Events {
    None,
    One(EventWait),
    Many(Box<[EventWait]>),
}

impl Events {
    pub(super) fn iter(&self) -> std::slice::Iter<'_, EventWait> {
        match self {
            Events::None => [].iter(),
            Events::One(e) => std::slice::from_ref(e).iter(),
            Events::Many(es) => es.iter(),
        }
    }
}

/// Every parked instance of this engine, with a timer index.
#[derive(Debug, Default)]
pub(crate) struct ParkTable {
    by_id: HashMap<Arc<str>, Parked>,
    timers: BTreeSet<(u64, Arc<str>)>,
    /// Event names and payload types, shared by every entry.
    strings: HashSet<Arc<str>>,
}

impl ParkTable {
    /// Parks `id` on `conds`; returns whether its deadline is now the earliest.
    pub(super) fn insert(
        &mut self,
        id: &str,
        conds: &[WaitCond],
        clamp: impl Fn(u64) -> u64,
    ) -> bool {
        self.remove(id);
        let id: Arc<str> = Arc::from(id);
        let deadline_ms = conds.iter().filter_map(|c| c.deadline_ms).map(clamp).min();
        let mut waits: Vec<EventWait> = conds
            .iter()
            .filter_map(|c| {
                c.event_type.as_ref().map(|t| EventWait {
                    name: self.intern(&c.name),
                    occurrence: c.occurrence,
                    type_name: self.intern(t),
                })
            })
            .collect();
        let events = match waits.len() {
            0 => Events::None,
            1 => Events::One(waits.pop().expect("one wait")),
            _ => Events::Many(waits.into_boxed_slice()),
        };
        let earliest = match deadline_ms {
            Some(d) => {
                let earliest = self.timers.first().is_none_or(|(first, _)| d < *first);
                self.timers.insert((d, Arc::clone(&id)));
                earliest
            }
            None => false,
        };
        self.by_id.insert(
            id,
            Parked {
                deadline_ms,
                events,
            },
        );
        crate::metrics::parked(1);
        earliest
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(known) = self.strings.get(s) {
            return Arc::clone(known);
        }
        let new: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&new));
        new
    }

    /// Unparks `id`.
    pub(super) fn remove(&mut self, id: &str) -> Option<Parked> {
        let (key, parked) = self.by_id.remove_entry(id)?;
        if let Some(d) = parked.deadline_ms {
            self.timers.remove(&(d, key));
        }
        crate::metrics::parked(-1);
        Some(parked)
    }

    /// What `id` waits for, if it is parked.
    pub(super) fn get(&self, id: &str) -> Option<&Parked> {
        self.by_id.get(id)
    }

    /// Whether `id` is parked.
    pub(super) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// How many instances are parked.
    #[cfg(feature = "hooks")]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Unparks and returns every instance whose deadline is at or before `now_ms`.
    pub(super) fn take_due(&mut self, now_ms: u64) -> Vec<Arc<str>> {
        let mut due = Vec::new();
        while let Some((d, _)) = self.timers.first() {
            if *d > now_ms {
                break;
            }
            let (d, id) = self.timers.pop_first().expect("first exists");
            self.by_id.remove(&id);
            crate::metrics::claim_lag_ms(now_ms.saturating_sub(d));
            due.push(id);
        }
        crate::metrics::parked(-(due.len() as i64));
        due
    }

    /// The earliest deadline of any parked instance.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|(d, _)| *d)
    }
}

impl Drop for ParkTable {
    fn drop(&mut self) {
        // Its instances are no longer parked in this process.
        crate::metrics::parked(-(self.by_id.len() as i64));
    }
}

/// A park table for the benchmark (feature `hooks`): `n` instances each
/// waiting on one event.
#[cfg(feature = "hooks")]
pub(crate) fn bench_table(prefix: &str, n: usize) -> Box<dyn std::any::Any> {
    let mut table = ParkTable::default();
    let cond = WaitCond {
        name: "go".into(),
        occurrence: 0,
        deadline_ms: None,
        event_type: Some("u64".into()),
    };
    for i in 0..n {
        table.insert(&format!("{prefix}-{i}"), std::slice::from_ref(&cond), |d| d);
    }
    Box::new(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(deadline: u64) -> WaitCond {
        WaitCond {
            name: "t".into(),
            occurrence: 0,
            deadline_ms: Some(deadline),
            event_type: None,
        }
    }

    fn event(name: &str) -> WaitCond {
        WaitCond {
            name: name.into(),
            occurrence: 0,
            deadline_ms: None,
            event_type: Some("u32".into()),
        }
    }

    #[test]
    fn timers_fire_in_order_and_events_stay() {
        let mut t = ParkTable::default();
        assert!(t.insert("b", &[timer(20)], |d| d));
        assert!(t.insert("a", &[timer(10)], |d| d));
        assert!(!t.insert("e", &[event("go")], |d| d));
        assert!(!t.insert("c", &[timer(30), event("x")], |d| d));
        assert_eq!(t.next_deadline(), Some(10));
        assert_eq!(
            t.take_due(20).iter().map(|s| &**s).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(t.contains("c") && t.contains("e") && !t.contains("a"));
        assert_eq!(
            &*t.get("c").unwrap().events.iter().next().unwrap().name,
            "x"
        );
        assert!(t.remove("c").is_some());
        assert_eq!(t.next_deadline(), None);
        assert!(t.contains("e"));
    }

    #[test]
    fn reparking_replaces_the_old_entry() {
        let mut t = ParkTable::default();
        t.insert("a", &[timer(10)], |d| d);
        t.insert("a", &[timer(50)], |d| d);
        assert_eq!(t.take_due(20).len(), 0);
        assert_eq!(t.take_due(50).len(), 1);
    }
}
