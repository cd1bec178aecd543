//! Events and cancellation: decided by the backend under the instance's
//! lock (so that an event and a timeout, or a cancel and an end, cannot
//! both win), then followed locally: a running instance's waits are rung,
//! a cancelled one stops before its next step.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::error::{Error, Result, UsageError};
use crate::manifest::Shape;
use crate::records::{EventRecord, InstanceState, TransitionKind};

use super::Core;

impl Core {
    /// Stores event `name` with the encoded `payload` of type `type_name`
    /// for instance `id` and delivers it; see `Engine::send_event`.
    pub(super) async fn send_event(
        self: &Arc<Self>,
        id: String,
        name: String,
        typed: (&'static str, Arc<Shape>),
        payload: Vec<u8>,
    ) -> Result<()> {
        self.deliver(id, name, typed, payload, None)
            .await
            .map(|_| ())
    }

    /// [`send_event`](Self::send_event), with an idempotency key when
    /// `key` is given: returns whether the event was stored now (`false`:
    /// an event with that key was stored before, nothing was done).
    pub(super) async fn deliver(
        self: &Arc<Self>,
        id: String,
        name: String,
        (type_name, shape): (&'static str, Arc<Shape>),
        payload: Vec<u8>,
        key: Option<&str>,
    ) -> Result<bool> {
        let backend = &self.services.backend;
        // The manifest an instance runs on never changes: read it first.
        let record = backend
            .load(&id)
            .await?
            .ok_or_else(|| Error::Usage(UsageError::NotFound { id: id.clone() }))?;
        let manifest = self.manifest_for(&record).await;
        let check = |_: &crate::records::InstanceRecord,
                     seq: u32,
                     parked: Option<&str>,
                     timed_out_before: bool| {
            let mismatch = |expected: String| {
                Err(Error::Usage(UsageError::EventTypeMismatch {
                    instance: id.clone(),
                    event: name.clone(),
                    expected,
                    got: shape.text.clone(),
                }))
            };
            // Checked against the workflow's wait of that name, whether or
            // not the instance waits yet: nothing accepted here can block it.
            if let Some(manifest) = &manifest
                && let Some((_, site)) = manifest.site(&name)
                && let Some(types) = &site.types
                && types.value.fingerprint != shape.fingerprint
            {
                return mismatch(types.value.text.clone());
            }
            let waiting = parked
                .map(str::to_string)
                .or_else(|| self.waiting_type(&id, &name, seq));
            if let Some(expected) = &waiting
                && *expected != shape.text
            {
                return mismatch(expected.clone());
            }
            // Late for a wait that timed out, and nothing waits for the
            // name again now: storing it would drop it silently.
            if timed_out_before && waiting.is_none() {
                return Err(Error::Usage(UsageError::WaitTimedOut {
                    instance: id.clone(),
                    event: name.clone(),
                    occurrence: seq - 1,
                }));
            }
            Ok(())
        };
        let event = EventRecord {
            type_name: type_name.to_string(),
            fingerprint: shape.fingerprint,
            shape: shape.text.clone(),
            payload,
            sent_at_ms: self.services.clock.now_ms(),
        };
        let seq = match key {
            None => backend.send_event(&id, &name, event, &check).await?,
            Some(key) => match backend
                .send_event_keyed(&id, &name, event, &check, key)
                .await?
            {
                Some(seq) => seq,
                None => {
                    tracing::info!(
                        durable.instance_id = %id,
                        durable.event = %name,
                        durable.send_key = %key,
                        "event already sent with this key; nothing done"
                    );
                    return Ok(false);
                }
            },
        };
        tracing::info!(
            durable.instance_id = %id,
            durable.event = %name,
            durable.occurrence = seq,
            "event sent"
        );
        crate::metrics::event_sent(&record.workflow);
        Ok(true)
    }

    /// Cancels instance `id` and the children started to go with it; see
    /// `Engine::cancel`.
    pub(super) async fn cancel(self: &Arc<Self>, id: &str) -> Result<()> {
        // A workflow with compensations compensates first (`engine/saga.rs`).
        // Its children go at once either way.
        if !self.cancel_compensating(id).await? {
            self.cancel_one(id).await?;
        }
        self.cancel_children(id).await;
        Ok(())
    }

    /// Cancels instance `id` alone, at once.
    pub(super) async fn cancel_one(&self, id: &str) -> Result<()> {
        let workflow = std::sync::OnceLock::new();
        let parent = std::sync::OnceLock::new();
        let update = |mut record: crate::records::InstanceRecord| {
            let _ = workflow.set(record.workflow.clone());
            let _ = parent.set(record.parent().map(|(p, _)| p.to_string()));
            record.state = InstanceState::Cancelled;
            self.push_transition(&mut record, TransitionKind::Cancelled);
            record
        };
        self.services.backend.cancel(id, &update).await?;
        tracing::info!(durable.instance_id = %id, "instance cancelled");
        let workflow = workflow.get().map_or("", String::as_str);
        crate::metrics::instance_finished(workflow, &InstanceState::Cancelled);
        self.tell_parent(id, parent.get().and_then(Option::as_deref))
            .await;
        // The owner's later writes are refused by the backend already; this
        // stops an owner in this process before its next step.
        if let Some(slot) = self.instances.get(id) {
            slot.signals.cancelled.store(true, Ordering::SeqCst);
            slot.signals.ring();
            if !slot.driving.active() {
                self.finish_slot(
                    id,
                    &slot,
                    Err(Error::Instance(crate::error::InstanceError::Cancelled {
                        instance: id.to_string(),
                    })),
                );
            }
        }
        Ok(())
    }

    /// The payload type a running instance `id` of this process waits for
    /// as event `name` number `seq`, if it waits.
    fn waiting_type(&self, id: &str, name: &str, seq: u32) -> Option<String> {
        let slot = self.instances.get(id)?;
        let waiting = slot
            .signals
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        waiting
            .iter()
            .find(|c| c.name == name && c.occurrence == seq)
            .and_then(|c| c.event_type.clone())
    }
}
