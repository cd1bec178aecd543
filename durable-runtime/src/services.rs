//! [`Services`]: what a running instance may use of the engine, and nothing
//! more: the journal, the clock and the event gate. The engine builds it;
//! [`Ctx`](crate::Ctx) holds it and never names the engine.

use std::sync::Arc;

use crate::journal::Journal;
use crate::time::Clock;

/// The narrow set of services shared by the engine and every instance.
pub(crate) struct Services {
    /// Typed, durable reads and writes.
    pub journal: Journal,
    /// Every timestamp, deadline and timer.
    pub clock: Arc<dyn Clock>,
    /// Serializes event delivery, timed-out waits and cancellation, so that
    /// an event and a timeout (or a cancel and an end) cannot both win.
    pub event_gate: tokio::sync::Mutex<()>,
    /// The test kit's step mocks and body counters.
    #[cfg(feature = "testing")]
    pub hooks: Option<Arc<crate::hooks::Hooks>>,
}

impl Services {
    pub(crate) fn new(journal: Journal, clock: Arc<dyn Clock>) -> Services {
        Services {
            journal,
            clock,
            event_gate: tokio::sync::Mutex::new(()),
            #[cfg(feature = "testing")]
            hooks: None,
        }
    }
}
