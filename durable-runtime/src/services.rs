//! [`Services`]: what a running instance may use of the engine, and nothing
//! more: the backend, the clock and the value codec's limit. The engine
//! builds it; [`Ctx`](crate::Ctx) holds it and never names the engine.

use std::sync::Arc;

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
        }
    }

    /// Encodes a user value (input, output, step outcome, event payload),
    /// refusing one over the size limit.
    pub(crate) fn encode_value<T: Serialize + ?Sized>(
        &self,
        id: &str,
        what: &str,
        value: &T,
    ) -> Result<Vec<u8>> {
        let bytes = crate::codec::encode(value).map_err(|reason| {
            Error::Replay(ReplayError::Encode {
                instance: id.to_string(),
                what: what.to_string(),
                reason,
            })
        })?;
        if bytes.len() > self.max_value_size {
            return Err(Error::Replay(ReplayError::ValueTooLarge {
                instance: id.to_string(),
                what: what.to_string(),
                size: bytes.len(),
                limit: self.max_value_size,
            }));
        }
        Ok(bytes)
    }
}
