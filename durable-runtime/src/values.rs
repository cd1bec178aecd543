//! Checkpointed values for workflow code between steps: the time, random
//! numbers and UUIDs, each recorded the first time and replayed after, so
//! the workflow stays deterministic.
//!
//! Each is a step of a reserved name (`durable::now`, `durable::random`,
//! `durable::uuid`; names starting with `durable::` are reserved), numbered
//! by occurrence like any step in a loop.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::context::Ctx;

/// 64 bits from the OS-seeded hasher keys and the clock.
fn fresh_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl Ctx {
    /// The current time, checkpointed: the first run records the engine
    /// clock's time, a replay returns that same time. Use it instead of
    /// `SystemTime::now()` in workflow code between steps.
    pub async fn now(&self) -> SystemTime {
        let ms = self
            .step("durable::now", || async {
                Ok::<u64, ()>(self.services.clock.now_ms())
            })
            .await
            .unwrap_or(0);
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// A random `u64`, checkpointed: replays return the same number. Use it
    /// instead of `rand::random()` in workflow code between steps.
    pub async fn random(&self) -> u64 {
        self.step("durable::random", || async { Ok::<u64, ()>(fresh_u64()) })
            .await
            .unwrap_or(0)
    }

    /// A random (version 4) UUID in its text form, checkpointed: replays
    /// return the same UUID. Use it instead of `Uuid::new_v4()` in
    /// workflow code between steps.
    pub async fn uuid(&self) -> String {
        self.step("durable::uuid", || async {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&fresh_u64().to_le_bytes());
            b[8..].copy_from_slice(&fresh_u64().to_le_bytes());
            b[6] = (b[6] & 0x0f) | 0x40;
            b[8] = (b[8] & 0x3f) | 0x80;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Ok::<String, ()>(format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ))
        })
        .await
        .unwrap_or_default()
    }
}
