//! The only file that names bincode: every stored record and value goes
//! through [`encode`] / [`decode`], inside a versioned envelope.
//!
//! Envelope: one byte of format version, then the bincode 2 (standard config,
//! varint) encoding of the serde value. Decoding refuses a newer version,
//! caps any length prefix at [`DECODE_LIMIT`] so a hostile prefix cannot make
//! it allocate gigabytes, and requires the whole slice to be consumed, so a
//! value of another type that happens to parse a prefix is still refused.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format version written in every envelope (and in the store's meta tree).
pub(crate) const FORMAT_VERSION: u8 = 2;

/// The most bytes a decoded value may claim.
pub(crate) const DECODE_LIMIT: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes `value` behind the current format version.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    // Room for a typical record at once: growing from one byte reallocates
    // several times per record (the buffer only lives until it is stored).
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Why an envelope did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Written by a newer format.
    TooNew(u8),
    /// Written by an older format, whose records this build does not read.
    TooOld(u8),
    /// Malformed, truncated, of another type, or over the limit.
    Invalid(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooNew(v) => write!(
                f,
                "written by format version {v}, this build reads up to {FORMAT_VERSION}"
            ),
            DecodeError::TooOld(v) => write!(
                f,
                "written by format version {v}, this build reads only version {FORMAT_VERSION}"
            ),
            DecodeError::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes an envelope written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| DecodeError::Invalid("empty record".into()))?;
    if version > FORMAT_VERSION {
        return Err(DecodeError::TooNew(version));
    }
    if version == 0 {
        return Err(DecodeError::Invalid(
            "format version 0 is not a record".into(),
        ));
    }
    if version < FORMAT_VERSION {
        return Err(DecodeError::TooOld(version));
    }
    let (value, read) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if read != body.len() {
        return Err(DecodeError::Invalid(format!(
            "{} trailing bytes after the value",
            body.len() - read
        )));
    }
    Ok(value)
}

/// Decodes an envelope written by [`encode`] with `seed` (values read by
/// their stored shape rather than by a Rust type).
#[cfg(feature = "json")]
pub(crate) fn decode_seed<'de, S: serde::de::DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value, DecodeError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| DecodeError::Invalid("empty record".into()))?;
    if version != FORMAT_VERSION {
        return Err(if version > FORMAT_VERSION {
            DecodeError::TooNew(version)
        } else {
            DecodeError::TooOld(version)
        });
    }
    let (value, read) = bincode::serde::seed_decode_from_slice(seed, body, config())
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if read != body.len() {
        return Err(DecodeError::Invalid(format!(
            "{} trailing bytes after the value",
            body.len() - read
        )));
    }
    Ok(value)
}

/// `#[serde(with = "crate::codec::bytes")]` for a `Vec<u8>` field: written
/// as one byte string instead of a sequence of `u8`s. bincode encodes both
/// the same way (a varint length, then the bytes), so stored records do not
/// change; only the per-byte serde calls are gone.
pub(crate) mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct AsBytes(#[serde(with = "bytes")] Vec<u8>, u32);

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct AsSeq(Vec<u8>, u32);

    #[test]
    fn byte_fields_encode_as_a_vec_of_u8_does() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let as_bytes = encode(&AsBytes(data.clone(), 9)).unwrap();
            let as_seq = encode(&AsSeq(data.clone(), 9)).unwrap();
            assert_eq!(as_bytes, as_seq, "length {len}");
            assert_eq!(
                decode::<AsBytes>(&as_seq).unwrap(),
                AsBytes(data.clone(), 9)
            );
            assert_eq!(decode::<AsSeq>(&as_bytes).unwrap(), AsSeq(data, 9));
        }
    }

    #[test]
    fn round_trip() {
        let v: Result<(u32, String), String> = Ok((7, "x".into()));
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Result<(u32, String), String>>(&bytes).unwrap(), v);
    }

    #[test]
    fn newer_version_is_refused() {
        let mut bytes = encode(&5u32).unwrap();
        bytes[0] = FORMAT_VERSION + 1;
        assert_eq!(
            decode::<u32>(&bytes),
            Err(DecodeError::TooNew(FORMAT_VERSION + 1))
        );
    }

    #[test]
    fn other_type_is_refused() {
        let bytes = encode(&("a".to_string(), 1u64, 2u64)).unwrap();
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode::<u64>(&[]).is_err());
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // version, then a varint length of u64::MAX-ish for a Vec<u8>.
        let bytes = [
            FORMAT_VERSION,
            253,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<String>(&bytes).is_err());
    }
}
