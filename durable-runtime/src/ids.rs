//! Instance ids: validation, the idempotency check of a start, and the keys
//! handed to outside systems.

use crate::error::{Error, Result};

/// The longest instance id accepted, in bytes.
pub const MAX_ID_LEN: usize = 1024;

/// [`UsageError::InvalidId`](crate::UsageError::InvalidId) unless `id` is a usable instance id.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is longer than 1024 bytes"
    } else {
        return Ok(());
    };
    let shown: String = id.chars().take(64).collect();
    Err(Error::Usage(crate::error::UsageError::InvalidId {
        id: shown,
        reason,
    }))
}

/// [`UsageError::IdConflict`](crate::UsageError::IdConflict) unless a start of `workflow` with `input` matches
/// the instance stored under `id`.
pub(crate) fn check_conflict(
    id: &str,
    workflow: &str,
    input: &[u8],
    stored_workflow: &str,
    stored_input: &[u8],
) -> Result<()> {
    if workflow != stored_workflow {
        return Err(Error::Usage(crate::error::UsageError::IdConflict {
            id: id.to_string(),
            existing: format!("workflow {stored_workflow:?}"),
        }));
    }
    if input != stored_input {
        return Err(Error::Usage(crate::error::UsageError::IdConflict {
            id: id.to_string(),
            existing: "a different input".into(),
        }));
    }
    Ok(())
}

/// The idempotency key of the instance itself.
pub(crate) fn instance_idempotency_key(id: &str) -> String {
    format!("durable:{}:{}", id.len(), id)
}

/// The idempotency key of one step occurrence: stable across retries,
/// replays and restarts, distinct for any two (id, name, occurrence).
pub(crate) fn step_idempotency_key(id: &str, name: &str, occurrence: u32) -> String {
    // Built without the formatting machinery: it is made for every step.
    let mut key = String::with_capacity(8 + 10 + id.len() + 1 + name.len() + 1 + 10 + 2);
    key.push_str("durable:");
    push_decimal(&mut key, id.len() as u64);
    key.push(':');
    key.push_str(id);
    key.push(':');
    key.push_str(name);
    key.push(':');
    push_decimal(&mut key, u64::from(occurrence));
    key
}

/// Appends `n` in decimal, as `{}` would.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keys_read_as_formatted() {
        for (id, name, n) in [
            ("", "s", 0u32),
            ("user-42", "charge-card", 7),
            ("ü:x", "a:b", u32::MAX),
            ("i", "n", 10),
        ] {
            assert_eq!(
                step_idempotency_key(id, name, n),
                format!("durable:{}:{}:{}:{}", id.len(), id, name, n)
            );
        }
    }
}
