//! Events and cancellation: both decided under the event gate, so that an
//! event and a timeout, or a cancel and an end, cannot both win.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::records::{EventRecord, InstanceState, TransitionKind};

use super::Core;

impl Core {
    /// Stores event `name` with the encoded `payload` of type `type_name`
    /// for instance `id` and delivers it; see `Engine::send_event`.
    pub(super) async fn send_event(
        self: &Arc<Self>,
        id: String,
        name: String,
        (type_name, shape): (&'static str, Arc<crate::manifest::Shape>),
        payload: Vec<u8>,
    ) -> Result<()> {
        let journal = &self.services.journal;
        let _events = self.services.event_gate.lock().await;
        let record = journal
            .load(&id)?
            .ok_or_else(|| Error::Usage(crate::error::UsageError::NotFound { id: id.clone() }))?;
        ensure_unfinished(&id, &record.state)?;
        // Checked against the workflow's wait of that name, whether or not
        // the instance waits yet: nothing accepted here can block it later.
        if let Some(manifest) = self.manifest_for(&record)
            && let Some((_, site)) = manifest.site(&name)
            && let Some(types) = &site.types
            && types.value.fingerprint != shape.fingerprint
        {
            return Err(Error::Usage(crate::error::UsageError::EventTypeMismatch {
                instance: id,
                event: name,
                expected: types.value.text.clone(),
                got: shape.text.clone(),
            }));
        }
        let seq = journal.next_event_seq(&id, &name)?;
        if let Some(expected) = self.waiting_type(&id, &name, seq)
            && expected != shape.text
        {
            return Err(Error::Usage(crate::error::UsageError::EventTypeMismatch {
                instance: id,
                event: name,
                expected,
                got: shape.text.clone(),
            }));
        }
        let event = EventRecord {
            type_name: type_name.to_string(),
            fingerprint: shape.fingerprint,
            shape: shape.text.clone(),
            payload,
            sent_at_ms: self.services.clock.now_ms(),
        };
        journal.put_event(&id, &name, seq, &event).await?;
        tracing::info!(
            durable.instance_id = %id,
            durable.event = %name,
            durable.occurrence = seq,
            "event sent"
        );
        self.deliver(&id, &name, seq);
        Ok(())
    }

    /// Cancels instance `id`; see `Engine::cancel`.
    pub(super) async fn cancel(self: &Arc<Self>, id: &str) -> Result<()> {
        let journal = &self.services.journal;
        let _events = self.services.event_gate.lock().await;
        let mut record = journal.load(id)?.ok_or_else(|| {
            Error::Usage(crate::error::UsageError::NotFound { id: id.to_string() })
        })?;
        ensure_unfinished(id, &record.state)?;
        let slot = self.instances.get(id);
        let mut ended = match &slot {
            Some(slot) => {
                let ended = slot.ended.lock().await;
                if *ended {
                    return Err(Error::Usage(crate::error::UsageError::InstanceFinished {
                        instance: id.to_string(),
                        status: "completed",
                    }));
                }
                slot.signals.cancelled.store(true, Ordering::SeqCst);
                slot.signals.ring();
                Some(ended)
            }
            None => None,
        };
        // Reload: the instance may have moved on while we waited for its end lock.
        if let Some(latest) = journal.load(id)? {
            record = latest;
        }
        ensure_unfinished(id, &record.state)?;
        let was_parked = self.scheduler.unpark(id);
        record.state = InstanceState::Cancelled;
        self.push_transition(&mut record, TransitionKind::Cancelled);
        journal.commit_record(id, &record, None).await?;
        tracing::info!(durable.instance_id = %id, durable.parked = was_parked, "instance cancelled");
        if let Some(ended) = ended.as_mut() {
            **ended = true;
        }
        drop(ended);
        if let Some(slot) = slot
            && (was_parked || !slot.driving.load(Ordering::SeqCst))
        {
            self.finish_slot(
                id,
                &slot,
                Err(Error::Instance(crate::error::InstanceError::Cancelled {
                    instance: id.to_string(),
                })),
            );
        }
        Ok(())
    }

    /// The payload type instance `id` waits for as event `name` number `seq`, if it waits.
    fn waiting_type(&self, id: &str, name: &str, seq: u32) -> Option<String> {
        if let Some(slot) = self.instances.get(id) {
            let waiting = slot
                .signals
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(t) = waiting
                .iter()
                .find(|c| c.name == name && c.occurrence == seq)
                .and_then(|c| c.event_type.clone())
            {
                return Some(t);
            }
        }
        let parked = self.scheduler.table();
        let wait = parked
            .get(id)?
            .events
            .iter()
            .find(|e| &*e.name == name && e.occurrence == seq)?;
        Some(wait.type_name.to_string())
    }

    /// Tells instance `id` that event `name` number `seq` is stored: wakes it
    /// if it is parked on it, rings its waits if it is running.
    fn deliver(self: &Arc<Self>, id: &str, name: &str, seq: u32) {
        let woken = {
            let mut parked = self.scheduler.table();
            let waits = parked.get(id).is_some_and(|p| {
                p.events
                    .iter()
                    .any(|e| &*e.name == name && e.occurrence == seq)
            });
            waits && parked.remove(id).is_some()
        };
        if woken {
            self.wake(id);
        } else if let Some(slot) = self.instances.get(id) {
            slot.signals.ring();
        }
    }
}

/// [`UsageError::InstanceFinished`](crate::UsageError::InstanceFinished) if the instance has finished.
pub(super) fn ensure_unfinished(id: &str, state: &InstanceState) -> Result<()> {
    let status = match state {
        InstanceState::Completed { .. } | InstanceState::Returned { .. } => "completed",
        InstanceState::Failed { .. } => "failed",
        InstanceState::Cancelled => "cancelled",
        _ => return Ok(()),
    };
    Err(Error::Usage(crate::error::UsageError::InstanceFinished {
        instance: id.to_string(),
        status,
    }))
}
