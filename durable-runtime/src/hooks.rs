//! The test kit's hooks into the step path (feature `testing`): step mocks
//! and body counters. A leaf: the services hold it, the kit fills it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::de::DeserializeOwned;

/// Step mocks and body counters, shared by a test kit engine and its steps.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    /// Step name → (fingerprint of its `Result<T, E>`, the encoded outcome).
    mocks: Mutex<HashMap<String, (u64, Vec<u8>)>>,
    /// Step name → how many times a real body ran.
    runs: Mutex<HashMap<String, u32>>,
}

impl Hooks {
    /// The mocked outcome of step `name`, decoded, if one was set; `Err`
    /// when the mock's types are not the step's (a step called through
    /// `ctx.step` from a helper fn, which the manifest cannot check).
    pub(crate) fn mock<T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        name: &str,
        fingerprint: u64,
    ) -> Option<std::result::Result<std::result::Result<T, E>, String>> {
        let mocks = self.mocks.lock().unwrap_or_else(|e| e.into_inner());
        let (written, bytes) = mocks.get(name)?;
        if *written != fingerprint {
            return Some(Err(
                "the test kit's mock of this step has other types than the step".into(),
            ));
        }
        Some(crate::journal::decode_value(bytes))
    }

    /// Sets the encoded outcome (with its types' fingerprint) of step `name`.
    pub(crate) fn set_mock(&self, name: &str, fingerprint: u64, bytes: Vec<u8>) {
        self.mocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), (fingerprint, bytes));
    }

    /// How many times step `name`'s real body ran.
    pub(crate) fn runs(&self, name: &str) -> u32 {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Counts a real run of step `name`'s body.
    pub(crate) fn ran(&self, name: &str) {
        *self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default() += 1;
    }
}
