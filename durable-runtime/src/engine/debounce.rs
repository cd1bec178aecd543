//! Debouncing: [`Engine::debounce`] keeps one pending start per key in the
//! backend's `Debounces` table (the last input, when it is due); the flow
//! loop (`schedules.rs`) fires it once due.
//!
//! A key's record goes through three states, each written durably under
//! the row's lock: pending (calls replace the input and push the due
//! time), firing (the generation is closed: later calls start the next
//! generation), fired (the firing mark is cleared once the instance is
//! recorded). The instance of generation `g` has the id
//! `debounce:{key}:{g}`, so a crash between the marks fires the same id
//! again, which attaches: one instance per generation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::{Change, Table};
use crate::error::{Error, Result, UsageError};
use crate::schedule::{Debounce, check_name};
use crate::workflow::{IntoWorkflow, Workflow};

use super::handle::Handle;
use super::instances::{Birth, Run};
use super::schedules::{decode_row, encode_row};
use super::{Core, Engine, In};

/// A debounce key's record as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct DebounceRecord {
    /// The generation the pending (or next) burst of calls starts.
    generation: u64,
    pending: Option<Pending>,
    firing: Option<Firing>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    workflow: String,
    version: u32,
    input: Vec<u8>,
    first_ms: u64,
    due_ms: u64,
    /// `first_ms` plus the longest wait, if one was given.
    deadline_ms: Option<u64>,
}

impl Pending {
    fn fire_at(&self) -> u64 {
        self.deadline_ms.map_or(self.due_ms, |d| d.min(self.due_ms))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Firing {
    generation: u64,
    workflow: String,
    version: u32,
    input: Vec<u8>,
}

fn id_of(key: &str, generation: u64) -> String {
    format!("debounce:{key}:{generation}")
}

impl Engine {
    /// Starts an instance of `workflow` with `input` once calls with `key`
    /// stop coming for `debounce`'s window: each call replaces the input
    /// (the instance gets the last one) and pushes the start back, up to the
    /// longest wait if one is set. Durable: a start that is pending when
    /// every process dies still happens (once) after the restart.
    ///
    /// Returns the id the instance will have, `debounce:{key}:{n}` with `n`
    /// counting the bursts of `key` (calls after the instance started begin
    /// the next). A key is for one workflow while a burst is pending:
    /// another workflow is [`UsageError::IdConflict`].
    ///
    /// ```
    /// # async fn demo<W>(engine: durable_runtime::Engine, reindex: W) -> durable_runtime::Result<()>
    /// # where W: durable_runtime::IntoWorkflow, W::Workflow: durable_runtime::Workflow<Input = String> {
    /// use std::time::Duration;
    /// use durable_runtime::Debounce;
    ///
    /// let window = Debounce::new(Duration::from_secs(2)).max_wait(Duration::from_secs(30));
    /// let id = engine.debounce(reindex, "doc-7", "edit 1".to_string(), window).await?;
    /// let same = engine.debounce(reindex, "doc-7", "edit 2".to_string(), window).await?;
    /// assert_eq!(id, same); // one instance, with input "edit 2"
    /// # Ok(())
    /// # }
    /// ```
    pub async fn debounce<I: IntoWorkflow>(
        &self,
        workflow: I,
        key: impl Into<String>,
        input: In<I>,
        debounce: Debounce,
    ) -> Result<String> {
        type W<I> = <I as IntoWorkflow>::Workflow;
        let key = key.into();
        check_name(&key)?;
        let (erased, _) = self.to_start(workflow).await?;
        let input = self
            .core
            .services
            .encode_value(&key, "debounced input", &input)?;
        let now = self.core.services.clock.now_ms();
        let window = crate::time::duration_ms(debounce.window);
        let longest = debounce.max_wait.map(crate::time::duration_ms);
        let decide = |current: Option<&[u8]>| -> Result<Change> {
            let mut r: DebounceRecord = match current {
                Some(bytes) => decode_row(bytes, &key)?,
                None => DebounceRecord::default(),
            };
            let due_ms = now.saturating_add(window);
            r.pending = Some(match r.pending.take() {
                Some(p) if p.workflow != W::<I>::NAME => {
                    return Err(Error::Usage(UsageError::IdConflict {
                        id: id_of(&key, r.generation),
                        existing: format!("a pending debounce of workflow {:?}", p.workflow),
                    }));
                }
                Some(p) => Pending {
                    input: input.clone(),
                    due_ms: due_ms.max(p.due_ms),
                    deadline_ms: p
                        .deadline_ms
                        .or(longest.map(|l| p.first_ms.saturating_add(l))),
                    ..p
                },
                None => Pending {
                    workflow: W::<I>::NAME.to_string(),
                    version: erased.version(),
                    input: input.clone(),
                    first_ms: now,
                    due_ms,
                    deadline_ms: longest.map(|l| now.saturating_add(l)),
                },
            });
            Ok(Change::Put(encode_row(&r, &key)?))
        };
        let after = self
            .core
            .services
            .backend
            .update_row(Table::Debounces, &key, &decide)
            .await?;
        let generation = match after {
            Some(bytes) => decode_row::<DebounceRecord>(&bytes, &key)?.generation,
            None => 0,
        };
        self.core.ring_flow();
        Ok(id_of(&key, generation))
    }
}

impl Core {
    /// Fires every due debounce whose workflow is registered here, and
    /// finishes firings a crash interrupted; returns when the next pending
    /// one is due.
    pub(super) async fn fire_debounces(self: &Arc<Self>, now: u64) -> Result<Option<u64>> {
        let rows = self.services.backend.rows(Table::Debounces).await?;
        let mut next: Option<u64> = None;
        let mut later = |at: u64| next = Some(next.map_or(at, |n: u64| n.min(at)));
        for (key, bytes) in rows {
            let mut r: DebounceRecord = match decode_row(&bytes, &key) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(durable.debounce = %key, durable.error = %e, "debounce not read");
                    continue;
                }
            };
            if r.firing.is_none()
                && let Some(p) = &r.pending
            {
                if p.fire_at() > now {
                    later(p.fire_at());
                    continue;
                }
                if self.registry.named(&p.workflow, Some(p.version)).is_none() {
                    continue; // left to the engines that register it
                }
                r = self.close_generation(&key, now).await?;
            }
            let Some(f) = r.firing else {
                continue;
            };
            let Some((workflow, erased)) = self.registry.named(&f.workflow, Some(f.version)) else {
                continue;
            };
            let id = id_of(&key, f.generation);
            let run = Run {
                manual: false,
                here: true,
            };
            let birth = Birth::own(&*erased, self.services.clock.now_ms());
            match Arc::clone(self)
                .start_or_attach(workflow, erased, id.clone(), f.input, run, birth)
                .await
            {
                Ok(done) => {
                    tracing::info!(durable.debounce = %key, durable.instance_id = %id, "debounce fired");
                    drop(Handle::<()>::new(id, done, self));
                    self.clear_firing(&key, f.generation).await?;
                }
                Err(e) => {
                    tracing::warn!(durable.debounce = %key, durable.error = %e, "a debounced start failed; trying again");
                    later(now.saturating_add(1_000));
                }
            }
            if let Some(p) = &r.pending {
                later(p.fire_at());
            }
        }
        Ok(next)
    }

    /// Turns key's due pending start into a firing (closing its
    /// generation); returns the record after.
    async fn close_generation(&self, key: &str, now: u64) -> Result<DebounceRecord> {
        let decide = |current: Option<&[u8]>| -> Result<Change> {
            let Some(bytes) = current else {
                return Ok(Change::Keep);
            };
            let mut r: DebounceRecord = decode_row(bytes, key)?;
            match r.pending.take() {
                Some(p) if r.firing.is_none() && p.fire_at() <= now => {
                    r.firing = Some(Firing {
                        generation: r.generation,
                        workflow: p.workflow,
                        version: p.version,
                        input: p.input,
                    });
                    r.generation += 1;
                    Ok(Change::Put(encode_row(&r, key)?))
                }
                _ => Ok(Change::Keep),
            }
        };
        let after = self
            .services
            .backend
            .update_row(Table::Debounces, key, &decide)
            .await?;
        match after {
            Some(bytes) => decode_row(&bytes, key),
            None => Ok(DebounceRecord::default()),
        }
    }

    /// Clears key's firing mark of `generation` (its instance is recorded).
    async fn clear_firing(&self, key: &str, generation: u64) -> Result<()> {
        let decide = |current: Option<&[u8]>| -> Result<Change> {
            let Some(bytes) = current else {
                return Ok(Change::Keep);
            };
            let mut r: DebounceRecord = decode_row(bytes, key)?;
            match &r.firing {
                Some(f) if f.generation == generation => {
                    r.firing = None;
                    Ok(Change::Put(encode_row(&r, key)?))
                }
                _ => Ok(Change::Keep),
            }
        };
        self.services
            .backend
            .update_row(Table::Debounces, key, &decide)
            .await?;
        Ok(())
    }
}
