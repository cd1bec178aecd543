//! What the debugging recorder saw, accumulated over snapshots.

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, Snapshotter};

/// One metric: its name and labels, sorted.
pub type Key = (String, Vec<(String, String)>);

/// What the recorder saw: counters and gauges as they stand, every
/// histogram sample so far (a snapshot drains the recorder).
#[derive(Default)]
pub struct Seen {
    pub values: HashMap<Key, f64>,
    pub samples: HashMap<Key, Vec<f64>>,
    pub described: HashMap<String, Option<::metrics::Unit>>,
}

impl Seen {
    /// Takes a snapshot into what was seen.
    pub fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, unit, description, value) in snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let (name, labels) = key.into_parts();
            let mut labels: Vec<(String, String)> = labels
                .iter()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            let name = name.as_str().to_string();
            if description.is_some() {
                self.described.insert(name.clone(), unit);
            }
            let key = (name, labels);
            // A snapshot swaps counters and gauges to zero: each holds what
            // changed since the last one (this recorder's gauges are moved
            // only by increments and decrements).
            match value {
                DebugValue::Counter(n) => *self.values.entry(key).or_default() += n as f64,
                DebugValue::Gauge(g) => *self.values.entry(key).or_default() += g.into_inner(),
                DebugValue::Histogram(xs) => self
                    .samples
                    .entry(key)
                    .or_default()
                    .extend(xs.into_iter().map(|x| x.into_inner())),
            }
        }
    }

    /// Takes snapshots until `holds` does (the engine records from its own
    /// tasks, a moment after what the test can observe otherwise).
    pub async fn until(
        &mut self,
        snapshotter: &Snapshotter,
        what: &str,
        holds: impl Fn(&Seen) -> bool,
    ) {
        crate::support::wait_until(what, async || {
            self.take(snapshotter);
            if holds(self) {
                Ok(())
            } else {
                Err(format!("{:?}", self.values))
            }
        })
        .await
    }

    /// The value of counter or gauge `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.values
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Every sample of histogram `name`, whatever its labels.
    pub fn samples(&self, name: &str) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .flat_map(|(_, xs)| xs.iter().copied())
            .collect()
    }

    /// Every sample of histogram `name` with exactly `labels`.
    pub fn samples_of(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.samples
            .get(&(name.to_string(), labels))
            .cloned()
            .unwrap_or_default()
    }
}
