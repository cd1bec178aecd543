//! Queues on the embedded backend. The store is locked to this process,
//! so the queue index lives in memory: built at the first queue call from
//! the unfinished instances' records (an `Enqueued` transition without a
//! `Dispatched` one is pending; with one, it runs), and kept up to date by
//! enqueue and dispatch under one lock, the queue lock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::Embedded;
use crate::backend::{Claim, ClaimKind, Created, QueueStats, Queued, Write};
use crate::error::Result;
use crate::queue::QueueSpec;
use crate::records::{InstanceRecord, TransitionKind, TransitionRecord};

/// The queues' state in memory.
#[derive(Default)]
pub(crate) struct QueueIndex {
    /// Pending ids by queue, in dispatch order: (priority, enqueued at, seq).
    pending: HashMap<String, BTreeMap<(i32, u64, u64), String>>,
    /// Dispatched ids not known to be finished, by queue, with partition.
    running: HashMap<String, HashMap<String, Option<String>>>,
    /// Dispatch times (ms) by queue, within the longest rate period.
    dispatched_at: HashMap<String, VecDeque<u64>>,
    /// (queue, dedup id) -> the instance enqueued with it.
    dedup: HashMap<(String, String), String>,
    seq: u64,
}

impl QueueIndex {
    fn add(&mut self, id: &str, record: &InstanceRecord) {
        let Some((entry, dispatched)) = record.queue_entry() else {
            return;
        };
        if let Some(dedup) = &entry.dedup {
            self.dedup
                .insert((entry.queue.clone(), dedup.clone()), id.to_string());
        }
        if dispatched {
            self.running
                .entry(entry.queue.clone())
                .or_default()
                .insert(id.to_string(), entry.partition.clone());
            if let Some(t) = record
                .transitions
                .iter()
                .rfind(|t| t.kind == TransitionKind::Dispatched)
            {
                self.dispatched_at
                    .entry(entry.queue.clone())
                    .or_default()
                    .push_back(t.at_ms);
            }
        } else {
            let at = record
                .transitions
                .iter()
                .rfind(|t| matches!(t.kind, TransitionKind::Enqueued(_)))
                .map_or(0, |t| t.at_ms);
            self.seq += 1;
            self.pending
                .entry(entry.queue.clone())
                .or_default()
                .insert((entry.priority, at, self.seq), id.to_string());
        }
    }
}

impl Embedded {
    /// The queue index, built at the first call.
    async fn queue_index(&self) -> Result<tokio::sync::MutexGuard<'_, Option<QueueIndex>>> {
        let mut guard = self.queues.lock().await;
        if guard.is_none() {
            let mut index = QueueIndex::default();
            for (key, _) in self.journal.active()? {
                let Ok(id) = std::str::from_utf8(&key) else {
                    continue;
                };
                if let Ok(Some(record)) = self.journal.load(id) {
                    index.add(id, &record);
                }
            }
            for times in index.dispatched_at.values_mut() {
                times.make_contiguous().sort_unstable();
            }
            *guard = Some(index);
        }
        Ok(guard)
    }

    /// Whether instance `id` (of the index) is unfinished.
    fn unfinished_now(&self, id: &str) -> bool {
        matches!(self.journal.load(id), Ok(Some(r)) if super::ensure_unfinished(id, &r.state).is_ok())
    }

    pub(super) async fn enqueue_inner(
        &self,
        items: &[(String, InstanceRecord)],
    ) -> Result<Vec<Queued>> {
        let mut guard = self.queue_index().await?;
        let index = guard.as_mut().expect("built above");
        let mut answers: Vec<Option<Queued>> = Vec::with_capacity(items.len());
        let mut to_create: Vec<(String, InstanceRecord)> = Vec::new();
        for (id, record) in items {
            let dedup = record
                .queue_entry()
                .and_then(|(e, _)| e.dedup.clone().map(|d| (e.queue.clone(), d)));
            if let Some(key) = &dedup
                && let Some(holder) = index.dedup.get(key)
                && holder != id
                && self.unfinished_now(holder)
            {
                answers.push(Some(Queued::Duplicate(holder.clone())));
                continue;
            }
            answers.push(None);
            to_create.push((id.clone(), record.clone()));
        }
        let created = crate::backend::Backend::create_many(self, &to_create).await?;
        let mut created = created.into_iter().zip(&to_create);
        for answer in answers.iter_mut().filter(|a| a.is_none()) {
            let Some((c, (id, record))) = created.next() else {
                break;
            };
            *answer = Some(match c {
                Created::New(lease) => {
                    // Held in its queue: nobody owns it until a dispatch.
                    crate::backend::Backend::release(self, id, lease).await?;
                    index.add(id, record);
                    Queued::New
                }
                Created::Unclaimed => {
                    index.add(id, record);
                    Queued::New
                }
                Created::Exists(existing) => Queued::Exists(existing),
            });
        }
        self.notify(crate::backend::Notice::Ready);
        Ok(answers.into_iter().flatten().collect())
    }

    pub(super) async fn dispatch_inner(
        &self,
        spec: &QueueSpec,
        workflows: &[(&'static str, u32)],
        room: usize,
    ) -> Result<Vec<Claim>> {
        if room == 0 || workflows.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.queue_index().await?;
        let index = guard.as_mut().expect("built above");
        let now = self.clock.now_ms();
        // Forget the finished.
        let running = index.running.entry(spec.name.clone()).or_default();
        let ids: Vec<String> = running.keys().cloned().collect();
        for id in ids {
            if !self.unfinished_now(&id) {
                running.remove(&id);
            }
        }
        let mut in_flight = running.len();
        let mut per_partition: HashMap<Option<String>, usize> = HashMap::new();
        for partition in running.values() {
            *per_partition.entry(partition.clone()).or_default() += 1;
        }
        let times = index.dispatched_at.entry(spec.name.clone()).or_default();
        let mut rate_room = usize::MAX;
        if let Some((n, period)) = spec.rate_ms() {
            while times
                .front()
                .is_some_and(|&t| t.saturating_add(period) <= now)
            {
                times.pop_front();
            }
            rate_room = (n as usize).saturating_sub(times.len());
        }
        let mut room = room.min(rate_room);
        if let Some(limit) = spec.concurrency {
            room = room.min((limit as usize).saturating_sub(in_flight));
        }
        let mut claims = Vec::new();
        let candidates: Vec<((i32, u64, u64), String)> = index
            .pending
            .get(&spec.name)
            .map(|p| p.iter().map(|(k, id)| (*k, id.clone())).collect())
            .unwrap_or_default();
        let mut taken = Vec::new();
        let mut blocked_partitions: HashSet<Option<String>> = HashSet::new();
        for (key, id) in &candidates {
            let id = id.as_str();
            if claims.len() >= room {
                break;
            }
            let Some(mut record) = self.journal.load(id)? else {
                taken.push(*key);
                continue;
            };
            if !record.queued() {
                // Finished (cancelled) while pending.
                taken.push(*key);
                continue;
            }
            let Some((entry, _)) = record.queue_entry() else {
                taken.push(*key);
                continue;
            };
            if entry.not_before_ms > now
                || !workflows.iter().any(|(w, _)| *w == record.workflow)
                || record.paused_since().is_some()
            {
                continue;
            }
            let partition = entry.partition.clone();
            if let Some(limit) = spec.partition_concurrency {
                let count = per_partition.entry(partition.clone()).or_default();
                if *count >= limit as usize || blocked_partitions.contains(&partition) {
                    continue;
                }
                *count += 1;
            }
            let Some(claim) = self.claim_now(id, record.clone(), 0, ClaimKind::Wake) else {
                continue;
            };
            record.transitions.push(TransitionRecord {
                at_ms: now,
                kind: TransitionKind::Dispatched,
            });
            let write = Write::Record {
                record: record.clone(),
                active: Some(0),
                appended: None,
            };
            if let Err(e) = self.commit_inner(id, claim.lease, write).await {
                crate::backend::Backend::release(self, id, claim.lease).await?;
                blocked_partitions.insert(partition);
                tracing::warn!(durable.instance_id = %id, durable.error = %e, "could not dispatch");
                return Err(e);
            }
            taken.push(*key);
            in_flight += 1;
            index
                .running
                .entry(spec.name.clone())
                .or_default()
                .insert(id.to_string(), partition);
            index
                .dispatched_at
                .entry(spec.name.clone())
                .or_default()
                .push_back(now);
            claims.push(Claim { record, ..claim });
        }
        let pending = index.pending.entry(spec.name.clone()).or_default();
        for key in taken {
            pending.remove(&key);
        }
        let _ = in_flight;
        Ok(claims)
    }

    pub(super) async fn queue_stats_inner(&self) -> Result<Vec<QueueStats>> {
        let mut guard = self.queue_index().await?;
        let index = guard.as_mut().expect("built above");
        let mut names: Vec<String> = index
            .pending
            .keys()
            .chain(index.running.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let running = index.running.entry(name.clone()).or_default();
            let ids: Vec<String> = running.keys().cloned().collect();
            for id in ids {
                if !self.unfinished_now(&id) {
                    running.remove(&id);
                }
            }
            let running = running.len() as u64;
            let pending = index.pending.get(&name).map_or(0, |p| {
                p.values()
                    .filter(|id| matches!(self.journal.load(id), Ok(Some(r)) if r.queued()))
                    .count() as u64
            });
            out.push(QueueStats {
                name,
                limits: None,
                pending,
                running,
            });
        }
        Ok(out)
    }
}
