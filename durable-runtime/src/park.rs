//! Parked instances: those waiting only on a timer or an event. A parked
//! instance holds no task and no future, only an entry in [`ParkTable`]
//! (and its records in the store); a timer or an event wakes it, and the
//! engine replays it from its checkpoints.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::records::WaitCond;

/// A wait on an event, as the table keeps it.
#[derive(Debug)]
pub(crate) struct EventWait {
    pub name: Box<str>,
    pub occurrence: u32,
    pub type_name: Box<str>,
}

/// What one parked instance waits for.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The earliest time it wakes by itself.
    pub deadline_ms: Option<u64>,
    /// The events any of which wakes it.
    pub events: Box<[EventWait]>,
}

/// Every parked instance of this engine, with a timer index.
#[derive(Debug, Default)]
pub(crate) struct ParkTable {
    by_id: HashMap<Arc<str>, Parked>,
    timers: BTreeSet<(u64, Arc<str>)>,
}

impl ParkTable {
    /// Parks `id` on `conds`; returns whether its deadline is now the earliest.
    pub fn insert(&mut self, id: &str, conds: &[WaitCond], clamp: impl Fn(u64) -> u64) -> bool {
        self.remove(id);
        let id: Arc<str> = Arc::from(id);
        let deadline_ms = conds.iter().filter_map(|c| c.deadline_ms).map(clamp).min();
        let events = conds
            .iter()
            .filter_map(|c| {
                c.event_type.as_ref().map(|t| EventWait {
                    name: c.name.as_str().into(),
                    occurrence: c.occurrence,
                    type_name: t.as_str().into(),
                })
            })
            .collect();
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
        earliest
    }

    /// Unparks `id`.
    pub fn remove(&mut self, id: &str) -> Option<Parked> {
        let (key, parked) = self.by_id.remove_entry(id)?;
        if let Some(d) = parked.deadline_ms {
            self.timers.remove(&(d, key));
        }
        Some(parked)
    }

    /// What `id` waits for, if it is parked.
    pub fn get(&self, id: &str) -> Option<&Parked> {
        self.by_id.get(id)
    }

    /// Whether `id` is parked.
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// How many instances are parked.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Unparks and returns every instance whose deadline is at or before `now_ms`.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Arc<str>> {
        let mut due = Vec::new();
        while let Some((d, _)) = self.timers.first() {
            if *d > now_ms {
                break;
            }
            let (_, id) = self.timers.pop_first().expect("first exists");
            self.by_id.remove(&id);
            due.push(id);
        }
        due
    }

    /// The earliest deadline of any parked instance.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|(d, _)| *d)
    }
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
        assert_eq!(&*t.get("c").unwrap().events[0].name, "x");
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
