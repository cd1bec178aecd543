//! [`Services`]: what a running instance may use of the engine, and nothing
//! more: the backend, the clock and the value codec's limit. The engine
//! builds it; [`Ctx`](crate::Ctx) holds it and never names the engine.

use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::backend::Backend;
use crate::error::{Error, ReplayError, Result};
use crate::time::Clock;

/// The narrow set of services shared by the engine and every instance.
pub(crate) struct Services {
    /// Durable storage, at the level of instances.
    pub backend: Arc<dyn Backend>,
    /// Every timestamp, deadline and timer.
    pub clock: Arc<dyn Clock>,
    /// The largest encoded value accepted.
    pub max_value_size: usize,
    /// The test kit's step mocks and body counters.
    #[cfg(feature = "testing")]
    pub hooks: Option<Arc<crate::hooks::Hooks>>,
    /// Starts and awaits other instances (child workflows); set by the
    /// engine once it exists.
    pub starter: OnceLock<Arc<dyn Starter>>,
}

/// The outcome of an instance once it has one: its encoded output, or the
/// instance error (failed, cancelled, ..).
pub(crate) type Ended = tokio::sync::watch::Receiver<Option<Result<Vec<u8>>>>;

/// A child instance to start or attach to.
pub(crate) struct ChildStart {
    /// The child's workflow name, version and type.
    pub workflow: &'static str,
    pub version: u32,
    pub type_id: std::any::TypeId,
    /// The child's workflow with its types erased (the engine's
    /// `Arc<dyn Erased>`, boxed as `Any` so that this seam does not name
    /// the engine), built only when this process does not register it (a
    /// pure client of a shared store).
    pub erase: Box<dyn Fn() -> Box<dyn std::any::Any + Send> + Send + Sync>,
    pub id: String,
    pub input: Vec<u8>,
    /// The parent's id.
    pub parent: String,
    /// Whether cancelling the parent cancels the child.
    pub cascade: bool,
}

/// What an instance may ask of the engine about other instances: the
/// engine implements it; [`Ctx`](crate::Ctx) reaches it through
/// [`Services::starter`] without naming the engine.
pub(crate) trait Starter: Send + Sync {
    /// Starts `child` (create-if-absent) or attaches to it; resolves once it
    /// is durably recorded, with the receiver of its outcome. `ShutDown`
    /// once the engine is gone.
    fn start_child(&self, child: ChildStart) -> crate::backend::BoxFuture<'_, Result<Ended>>;
}

impl Services {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        max_value_size: usize,
    ) -> Services {
        Services {
            backend,
            clock,
            max_value_size,
            #[cfg(feature = "testing")]
            hooks: None,
            starter: OnceLock::new(),
        }
    }

    /// The engine's [`Starter`]; `ShutDown` for instance `id` before the
    /// engine set it.
    pub(crate) fn starter(&self, id: &str) -> Result<Arc<dyn Starter>> {
        self.starter.get().cloned().ok_or_else(|| {
            Error::Instance(crate::error::InstanceError::ShutDown {
                instance: id.to_string(),
            })
        })
    }

    /// Encodes a user value (input, output, step outcome, event payload),
    /// refusing one over the size limit.
    pub(crate) fn encode_value<T: Serialize + ?Sized>(
        &self,
        id: &str,
        what: &str,
        value: &T,
    ) -> Result<Vec<u8>> {
        self.encode_value_as(id, || what.to_string(), value)
    }

    /// [`encode_value`](Self::encode_value), with the words for the value
    /// built only for an error (a step's outcome is encoded on every step).
    pub(crate) fn encode_value_as<T: Serialize + ?Sized>(
        &self,
        id: &str,
        what: impl FnOnce() -> String,
        value: &T,
    ) -> Result<Vec<u8>> {
        let bytes = match crate::codec::encode(value) {
            Ok(bytes) => bytes,
            Err(reason) => {
                return Err(Error::Replay(ReplayError::Encode {
                    instance: id.to_string(),
                    what: what(),
                    reason,
                }));
            }
        };
        if bytes.len() > self.max_value_size {
            return Err(Error::Replay(ReplayError::ValueTooLarge {
                instance: id.to_string(),
                what: what(),
                size: bytes.len(),
                limit: self.max_value_size,
            }));
        }
        Ok(bytes)
    }
}
