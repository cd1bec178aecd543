//! A write-ahead log in front of an embedded key-value store: the one place a
//! checkpoint becomes durable.
//!
//! [`Wal::append`] writes a group of batches as one record and `fdatasync`s
//! it: one device flush per group, at the cost of the disk's append floor.
//! The store behind it applies the same batches in memory and persists them
//! at its own pace; [`Wal::reset`] empties the log once the store has synced
//! everything (a checkpoint). After a crash, [`read`] returns every complete
//! record written since the last reset, to be applied again in order (puts
//! and deletes of whole values, so applying a record twice is harmless).
//! Reading never writes: a torn tail is dropped by the next reset.
//!
//! Torn tail or damage: records are appended one at a time and each is
//! `fdatasync`ed before the next is written, so a crash or a power cut can
//! only ever damage the *last* record. A record that does not check out
//! followed by one that does is therefore damage to acknowledged data (a bit
//! flip, a zeroed range, a lost page), not a torn write: [`read`] refuses
//! the log with [`StoreError::Corrupt`] and leaves it as it is, instead of
//! cutting it there and silently dropping the records after the damage.
//!
//! Format 2 (written by this build). Header, 24 bytes: `DWAL`, `version: u32
//! LE` (2), `salt: u64 LE` (random, new at every reset, never zero in either
//! half), `store_format: u32 LE` (the store's format version, so that an
//! older build refuses a newer store before anything touches it), and a
//! CRC-32C of the 20 bytes before it. Record: a 24-byte header, `tag: u32 LE`
//! (the salt's low half), `seq: u64 LE` (0 for the first record after a
//! reset, then +1), `len: u32 LE` of the payload (never 0), `payload_crc: u32
//! LE` (CRC-32C of the payload) and `header_crc: u32 LE` (CRC-32C of the
//! salt and the 20 bytes before it); then the payload: per op `tree: u8`,
//! `key_len: u32 LE`, key, `has_value: u8`, and when it has one `value_len:
//! u32 LE`, value. The salt keeps records of an earlier generation of the
//! file (before a reset) and zero-filled ranges from ever passing as records.
//!
//! Format 1 (the previous build): header `DWAL` + `1u32`, records `len: u32
//! LE`, `crc: u32 LE`, payload. Read (and checked for damage the same way),
//! then replaced by a format 2 log at the first checkpoint. A newer version
//! is refused ([`StoreError::FormatTooNew`]), another file is
//! [`StoreError::Corrupt`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{Batch, Op, Tree};
use crate::error::StoreError;

/// The log file's name in the store's directory.
pub(crate) const WAL_FILE: &str = "durable.wal";

/// The file's first bytes, before the version.
const MAGIC: &[u8; 4] = b"DWAL";

/// The format of records this build writes.
pub(crate) const WAL_VERSION: u32 = 2;

/// Bytes before the first record (format 2).
pub(crate) const HEADER_LEN: usize = 24;

/// Bytes of a record's header (format 2).
pub(crate) const RECORD_HEADER_LEN: usize = 24;

/// Bytes before the first record in a format 1 log.
const V1_HEADER_LEN: usize = 8;

/// The largest record accepted when reading back (a guard against garbage).
const MAX_RECORD: usize = 1 << 30;

/// An append-only, checksummed log of batch groups.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// Bytes of records after the header.
    len: u64,
    salt: u64,
    /// The sequence number of the next record.
    seq: u64,
    /// Set when a failed append could not be cut off again: the file may
    /// end in garbage, and a record after it would read as damage.
    broken: bool,
}

/// What [`read`] found in a log.
#[derive(Debug, Default)]
#[cfg_attr(not(test), allow(dead_code))] // `version` and `torn` are for tests
pub(crate) struct Replay {
    /// The batches of every complete record, oldest first.
    pub batches: Vec<Batch>,
    /// The store format version the header records (format 2 logs only).
    pub store_format: Option<u32>,
    /// The log's format version (0 when there is no log).
    pub version: u32,
    /// Bytes of a torn tail after the last complete record (dropped by the
    /// next reset).
    pub torn: u64,
}

fn io(op: &'static str, e: std::io::Error) -> StoreError {
    StoreError::io(op, e)
}

/// Reads the log in `dir` without writing anything: a missing or empty
/// log, or one cut short while its header was written, has no records.
///
/// Errors: [`StoreError::Corrupt`] when the file is not a log of this
/// library or is damaged before its last record,
/// [`StoreError::FormatTooNew`] when a newer build wrote it,
/// [`StoreError::Io`] when it cannot be read.
pub(crate) fn read(dir: &Path) -> Result<Replay, StoreError> {
    let path = dir.join(WAL_FILE);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)
                .map_err(|e| io("read the write-ahead log", e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(e) => return Err(io("open the write-ahead log", e)),
    }
    parse_log(dir, &bytes)
}

/// Parses the bytes of a log file; `dir` names the store in errors.
pub(crate) fn parse_log(dir: &Path, bytes: &[u8]) -> Result<Replay, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: dir.to_path_buf(),
        reason,
    };
    if bytes.iter().all(|&b| b == 0) {
        // Empty, or a header whose write never reached the disk.
        return Ok(Replay::default());
    }
    let magic_ok = bytes.len() >= 4 && &bytes[..4] == MAGIC;
    let version = (bytes.len() >= 8).then(|| u32_at(bytes, 4));
    if magic_ok && let Some(version) = version {
        if version > WAL_VERSION {
            return Err(StoreError::FormatTooNew {
                found: version,
                supported: WAL_VERSION,
            });
        }
        if version == 1 {
            return parse_v1(dir, bytes);
        }
        if version == 2 && bytes.len() >= HEADER_LEN && header_ok(bytes) {
            return parse_v2(dir, bytes);
        }
    }
    // No valid header. A reset (truncate, header, fsync) cut by a crash
    // leaves a short or zero-padded header and nothing after it; a record
    // is only appended once the header is durable.
    let header_len = if version == Some(1) {
        V1_HEADER_LEN
    } else {
        HEADER_LEN
    };
    let magic_like = bytes.iter().zip(MAGIC).all(|(&b, &m)| b == m || b == 0);
    let rest_zero = bytes
        .get(header_len..)
        .is_none_or(|rest| rest.iter().all(|&b| b == 0));
    if magic_like && rest_zero {
        return Ok(Replay {
            torn: bytes.len() as u64,
            ..Replay::default()
        });
    }
    if magic_ok {
        Err(corrupt(format!(
            "the header of the write-ahead log {WAL_FILE} is damaged (records follow it, so \
             this is not a reset cut short). Nothing was changed. Restore the store from a \
             backup"
        )))
    } else {
        Err(corrupt(format!(
            "{WAL_FILE} is not a write-ahead log of this library"
        )))
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn header_ok(bytes: &[u8]) -> bool {
    crc32c(&bytes[..HEADER_LEN - 4]) == u32_at(bytes, HEADER_LEN - 4)
}

fn parse_v2(dir: &Path, bytes: &[u8]) -> Result<Replay, StoreError> {
    let salt = u64_at(bytes, 8);
    let store_format = u32_at(bytes, 16);
    let mut batches = Vec::new();
    let mut at = HEADER_LEN;
    let mut seq = 0u64;
    let end = loop {
        match record_header(bytes, at, salt) {
            Some(h) if h.seq == seq => match h.payload(bytes) {
                Some(payload) => match parse(payload) {
                    Some(batch) => {
                        batches.push(batch);
                        at = h.end;
                        seq += 1;
                    }
                    // A payload whose checksum holds but does not parse.
                    None => break at,
                },
                None => break at,
            },
            _ => break at,
        }
    };
    if end < bytes.len() {
        // Where to look for a later record: past this one when its header
        // holds (its own payload may be torn), else right after its start.
        let from = match record_header(bytes, end, salt) {
            Some(h) if h.seq == seq => h.end,
            Some(_) => return Err(damaged(dir, end, &format!("record {seq}"), end)),
            None => end + 1,
        };
        let tag = (salt as u32).to_le_bytes();
        let mut p = from;
        while p + RECORD_HEADER_LEN <= bytes.len() {
            if bytes[p..p + 4] == tag && record_header(bytes, p, salt).is_some() {
                return Err(damaged(dir, end, &format!("record {seq}"), p));
            }
            p += 1;
        }
    }
    Ok(Replay {
        batches,
        store_format: Some(store_format),
        version: 2,
        torn: (bytes.len() - end) as u64,
    })
}

/// The error for a log damaged at `at` (where `record` should be) with an
/// intact record at `later`.
fn damaged(dir: &Path, at: usize, record: &str, later: usize) -> StoreError {
    StoreError::Corrupt {
        path: dir.to_path_buf(),
        reason: format!(
            "the write-ahead log {WAL_FILE} is damaged at byte {at}: {record} does not \
             check out, but an intact record follows it (at byte {later}). A crash or power \
             cut only ever tears the last record, so this is damage to acknowledged writes, \
             and cutting the log there would silently drop the records after it. Nothing was \
             changed. Restore the store from a backup; or, to give up every write from that \
             record on, truncate {WAL_FILE} to {at} bytes (`truncate -s {at} {WAL_FILE}`) \
             and open the store again"
        ),
    }
}

/// A record header (format 2) that checks out.
struct RecordHeader {
    seq: u64,
    payload_crc: u32,
    /// Where the payload starts.
    start: usize,
    /// Where the record ends.
    end: usize,
}

impl RecordHeader {
    /// The payload, when it is all there and its checksum holds.
    fn payload<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let payload = bytes.get(self.start..self.end)?;
        (crc32c(payload) == self.payload_crc).then_some(payload)
    }
}

fn record_header(bytes: &[u8], at: usize, salt: u64) -> Option<RecordHeader> {
    let h = bytes.get(at..at + RECORD_HEADER_LEN)?;
    if u32_at(h, 0) != salt as u32 {
        return None;
    }
    let mut crc = Crc32c::new();
    crc.update(&salt.to_le_bytes());
    crc.update(&h[..20]);
    if crc.finish() != u32_at(h, 20) {
        return None;
    }
    let len = u32_at(h, 12) as usize;
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let start = at + RECORD_HEADER_LEN;
    Some(RecordHeader {
        seq: u64_at(h, 4),
        payload_crc: u32_at(h, 16),
        start,
        end: start + len,
    })
}

/// Reads a format 1 log (the previous build's).
fn parse_v1(dir: &Path, bytes: &[u8]) -> Result<Replay, StoreError> {
    let mut batches = Vec::new();
    let mut at = V1_HEADER_LEN;
    while let Some((batch, next)) = read_v1_record(bytes, at) {
        batches.push(batch);
        at = next;
    }
    if at < bytes.len() {
        // A later record that checks out means damage. Checking a candidate
        // costs its length, so the search has a budget proportional to the
        // file: garbage never makes it quadratic. A torn tail (one record
        // cut short) never comes near it.
        let mut budget = 16 * bytes.len() as u64 + (1 << 20);
        for p in at + 1..bytes.len().saturating_sub(8) {
            let len = u32_at(bytes, p) as u64;
            if len == 0 || p as u64 + 8 + len > bytes.len() as u64 {
                continue;
            }
            if budget < len {
                return Err(StoreError::Corrupt {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "the write-ahead log {WAL_FILE} (format 1) is damaged at byte {at} and \
                         too garbled after it to tell a torn write from damage. Nothing was \
                         changed. Restore the store from a backup"
                    ),
                });
            }
            budget -= len;
            if read_v1_record(bytes, p).is_some() {
                let record = format!("record {} (format 1)", batches.len());
                return Err(damaged(dir, at, &record, p));
            }
        }
    }
    Ok(Replay {
        batches,
        store_format: None,
        version: 1,
        torn: (bytes.len() - at) as u64,
    })
}

/// Reads the format 1 record at `at`: its batch and where the next starts.
fn read_v1_record(bytes: &[u8], at: usize) -> Option<(Batch, usize)> {
    let header = bytes.get(at..at + 8)?;
    let len = u32_at(header, 0) as usize;
    let crc = u32_at(header, 4);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + 8..at + 8 + len)?;
    if crc32c(payload) != crc {
        return None;
    }
    Some((parse(payload)?, at + 8 + len))
}

impl Wal {
    /// Creates an empty log in `dir`, replacing the one there only once
    /// the new one is durable: written to a temporary file, fsynced and
    /// renamed over the old one, then the directory fsynced. Until the
    /// rename, the old log is untouched, whatever fails.
    pub(super) fn create(dir: &Path, store_format: u32) -> Result<Wal, StoreError> {
        let path = dir.join(WAL_FILE);
        let new = dir.join(format!("{WAL_FILE}.new"));
        let salt = new_salt(0);
        let written = (|| {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&new)?;
            file.set_len(0)?;
            file.write_all(&header(salt, store_format))?;
            super::fsync(&file, &new, false)?;
            Ok(file)
        })();
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&new);
                return Err(io("write a new write-ahead log", e));
            }
        };
        if let Err(e) = std::fs::rename(&new, &path) {
            let _ = std::fs::remove_file(&new);
            return Err(io("put the new write-ahead log in place", e));
        }
        #[cfg(test)]
        super::hooks::stage("log replaced", dir);
        super::sync_dir(dir)?;
        Ok(Wal {
            file,
            path,
            len: 0,
            salt,
            seq: 0,
            broken: false,
        })
    }

    /// Appends `batches` as one record and makes it durable.
    pub(super) fn append(&mut self, batches: &[Batch]) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::io_message(
                "append to the write-ahead log",
                "an earlier append or reset failed and could not be undone; reopen the store",
            ));
        }
        // The record header first (filled in below), then the payload, in
        // one buffer: the group is copied once.
        let mut record = Vec::with_capacity(
            RECORD_HEADER_LEN
                + batches
                    .iter()
                    .map(|b| b.size() + 16 * b.ops.len())
                    .sum::<usize>(),
        );
        record.resize(RECORD_HEADER_LEN, 0);
        for op in batches.iter().flat_map(|b| &b.ops) {
            record.push(op.tree.index() as u8);
            record.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
            record.extend_from_slice(&op.key);
            match &op.value {
                Some(v) => {
                    record.push(1);
                    record.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    record.extend_from_slice(v);
                }
                None => record.push(0),
            }
        }
        let payload_len = record.len() - RECORD_HEADER_LEN;
        if payload_len == 0 {
            return Ok(());
        }
        if payload_len > MAX_RECORD {
            return Err(StoreError::io_message(
                "append to the write-ahead log",
                format!(
                    "a group of {payload_len} bytes is over the log's {MAX_RECORD}-byte record limit"
                ),
            ));
        }
        write_header(self.salt, self.seq, &mut record);
        let written = self.file.write_all(&record).and_then(|()| {
            crate::crash::point("store.before_fsync");
            super::fsync(&self.file, &self.path, true)
        });
        if let Err(e) = written {
            // Whatever part of the record landed is a torn tail: cut it so the
            // next record does not follow garbage.
            if self.file.set_len(HEADER_LEN as u64 + self.len).is_err() {
                self.broken = true;
            }
            return Err(io("append to the write-ahead log", e));
        }
        self.len += record.len() as u64;
        self.seq += 1;
        Ok(())
    }

    /// Bytes of records in the log.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Empties the log under a new salt: call only once the store has made
    /// every applied batch durable on its own.
    pub(super) fn reset(&mut self, store_format: u32) -> Result<(), StoreError> {
        // Until the new header is durable, nothing may be appended: a record
        // under the old salt after it would read as a torn tail.
        self.broken = true;
        self.file
            .set_len(0)
            .map_err(|e| io("reset the write-ahead log", e))?;
        let salt = new_salt(self.salt);
        self.file
            .write_all(&header(salt, store_format))
            .and_then(|()| super::fsync(&self.file, &self.path, false))
            .map_err(|e| io("write the write-ahead log's header", e))?;
        self.salt = salt;
        self.len = 0;
        self.seq = 0;
        self.broken = false;
        Ok(())
    }
}

/// The header of a format 2 log.
fn header(salt: u64, store_format: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&WAL_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&salt.to_le_bytes());
    h[16..20].copy_from_slice(&store_format.to_le_bytes());
    let crc = crc32c(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Fills in the header of `record`: its first [`RECORD_HEADER_LEN`] bytes,
/// followed by the payload.
fn write_header(salt: u64, seq: u64, record: &mut [u8]) {
    let (header, payload) = record.split_at_mut(RECORD_HEADER_LEN);
    header[0..4].copy_from_slice(&(salt as u32).to_le_bytes());
    header[4..12].copy_from_slice(&seq.to_le_bytes());
    header[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[16..20].copy_from_slice(&crc32c(payload).to_le_bytes());
    let mut crc = Crc32c::new();
    crc.update(&salt.to_le_bytes());
    crc.update(&header[..20]);
    header[20..24].copy_from_slice(&crc.finish().to_le_bytes());
}

/// A salt unlike `previous`, with neither half zero.
fn new_salt(previous: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u64(previous);
        h.write_u32(std::process::id());
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(now.as_nanos());
        }
        let salt = h.finish();
        if salt as u32 != 0 && salt >> 32 != 0 && salt != previous {
            return salt;
        }
    }
}

fn parse(mut p: &[u8]) -> Option<Batch> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = p.split_at_checked(n)?;
        *p = tail;
        Some(head)
    }
    fn u32_le(p: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize)
    }
    let mut batch = Batch::new();
    while !p.is_empty() {
        let tree = *Tree::ALL.get(take(&mut p, 1)?[0] as usize)?;
        let key_len = u32_le(&mut p)?;
        let key = take(&mut p, key_len)?.to_vec();
        let value = match take(&mut p, 1)?[0] {
            0 => None,
            1 => {
                let len = u32_le(&mut p)?;
                Some(take(&mut p, len)?.to_vec())
            }
            _ => return None,
        };
        batch.ops.push(Op { tree, key, value });
    }
    Some(batch)
}

/// CRC-32C (Castagnoli), eight bytes at a time ("slicing-by-8": eight
/// tables of 256 entries, built at compile time).
struct Crc32c(u32);

impl Crc32c {
    const TABLES: [[u32; 256]; 8] = {
        let mut t = [[0u32; 256]; 8];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[0][i] = c;
            i += 1;
        }
        let mut i = 0;
        while i < 256 {
            let mut j = 1;
            while j < 8 {
                let prev = t[j - 1][i];
                t[j][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
                j += 1;
            }
            i += 1;
        }
        t
    };

    fn new() -> Crc32c {
        Crc32c(!0)
    }

    fn update(&mut self, data: &[u8]) {
        let t = &Self::TABLES;
        let mut crc = self.0;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            crc = t[7][(lo & 0xFF) as usize]
                ^ t[6][((lo >> 8) & 0xFF) as usize]
                ^ t[5][((lo >> 16) & 0xFF) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][c[4] as usize]
                ^ t[2][c[5] as usize]
                ^ t[1][c[6] as usize]
                ^ t[0][c[7] as usize];
        }
        for &b in chunks.remainder() {
            crc = t[0][((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(data);
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Batch {
        let mut b = Batch::new();
        b.put(Tree::Checkpoints, vec![n; 3], vec![n; 100]);
        b.delete(Tree::Active, vec![n]);
        b
    }

    /// A log with `n` records of one batch each; returns its bytes and the
    /// offset at which each record starts.
    fn log_with(dir: &Path, n: u8) -> (Vec<u8>, Vec<usize>) {
        let mut wal = Wal::create(dir, 1).unwrap();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(HEADER_LEN + wal.len() as usize);
            wal.append(&[batch(i)]).unwrap();
        }
        drop(wal);
        (std::fs::read(dir.join(WAL_FILE)).unwrap(), starts)
    }

    fn keys(replay: &Replay) -> Vec<u8> {
        replay.batches.iter().map(|b| b.ops[0].key[0]).collect()
    }

    fn is_damage(result: Result<Replay, StoreError>) -> String {
        match result {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(reason.contains("Restore the store"), "{reason}");
                reason
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn crc32c_known_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn crc32c_eight_at_a_time_is_the_bytewise_crc() {
        let bytewise = |data: &[u8], init: u32| {
            let mut crc = init;
            for &b in data {
                crc = Crc32c::TABLES[0][((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
            }
            crc
        };
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in 0..data.len() {
            for split in [0, len / 3, len] {
                let mut crc = Crc32c::new();
                crc.update(&data[..split]);
                crc.update(&data[split..len]);
                assert_eq!(
                    crc.0,
                    bytewise(&data[..len], !0),
                    "length {len}, split {split}"
                );
            }
        }
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, starts) = log_with(dir.path(), 3);
        let replay = parse_log(dir.path(), &bytes).unwrap();
        assert_eq!(keys(&replay), vec![0, 1, 2]);
        assert_eq!(replay.torn, 0);
        assert_eq!(replay.store_format, Some(1));
        assert_eq!(replay.batches[0], batch(0));
        // The last record cut short, anywhere in it.
        for cut in starts[2] + 1..bytes.len() {
            let replay = parse_log(dir.path(), &bytes[..cut]).unwrap();
            assert_eq!(keys(&replay), vec![0, 1], "cut at {cut}");
            assert_eq!(replay.torn, (cut - starts[2]) as u64);
        }
        // The last record's pages partly lost (zeros), or a zeroed tail
        // longer than the file was.
        let mut holes = bytes.clone();
        holes[starts[2] + 30..starts[2] + 60].fill(0);
        assert_eq!(keys(&parse_log(dir.path(), &holes).unwrap()), vec![0, 1]);
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 4096]);
        let replay = parse_log(dir.path(), &zeros).unwrap();
        assert_eq!(keys(&replay), vec![0, 1, 2]);
        assert_eq!(replay.torn, 4096);
    }

    #[test]
    fn reading_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = log_with(dir.path(), 2);
        let path = dir.path().join(WAL_FILE);
        let mut torn = bytes.clone();
        torn.extend_from_slice(&[7, 7, 7]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(keys(&read(dir.path()).unwrap()), vec![0, 1]);
        assert_eq!(std::fs::read(&path).unwrap(), torn);
        let empty = tempfile::tempdir().unwrap();
        assert!(read(empty.path()).unwrap().batches.is_empty());
        assert!(!empty.path().join(WAL_FILE).exists());
    }

    #[test]
    fn an_all_zero_tail_is_not_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = log_with(dir.path(), 0);
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 64]);
        let replay = parse_log(dir.path(), &zeros).unwrap();
        assert!(replay.batches.is_empty());
        assert_eq!(replay.torn, 64);
        // The previous format's empty record was all zeros too.
        let mut v1 = b"DWAL\x01\0\0\0".to_vec();
        v1.extend_from_slice(&[0; 64]);
        let replay = parse_log(dir.path(), &v1).unwrap();
        assert!(replay.batches.is_empty());
        // A file of zeros (a header that never reached the disk).
        assert!(parse_log(dir.path(), &[0; 100]).unwrap().batches.is_empty());
    }

    #[test]
    fn damage_before_an_intact_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, starts) = log_with(dir.path(), 4);
        // A flipped bit in a payload, in a length, in a sequence number, in
        // a tag; a zeroed range across two records; a lost record.
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("payload bit", {
                let mut b = bytes.clone();
                b[starts[1] + 40] ^= 0x10;
                b
            }),
            ("length bit", {
                let mut b = bytes.clone();
                b[starts[1] + 13] ^= 0x01;
                b
            }),
            ("sequence bit", {
                let mut b = bytes.clone();
                b[starts[1] + 4] ^= 0x02;
                b
            }),
            ("tag bit", {
                let mut b = bytes.clone();
                b[starts[0]] ^= 0x80;
                b
            }),
            ("zeroed range", {
                let mut b = bytes.clone();
                b[starts[1] + 10..starts[2] + 10].fill(0);
                b
            }),
            ("missing record", {
                let mut b = bytes[..starts[1]].to_vec();
                b.extend_from_slice(&bytes[starts[2]..]);
                b
            }),
        ];
        for (what, damaged) in cases {
            let reason = is_damage(parse_log(dir.path(), &damaged));
            assert!(reason.contains("damaged at byte"), "{what}: {reason}");
        }
        // The same damage in the last record is a torn tail.
        let mut last = bytes.clone();
        last[starts[3] + 40] ^= 0x10;
        assert_eq!(keys(&parse_log(dir.path(), &last).unwrap()), vec![0, 1, 2]);
    }

    #[test]
    fn records_of_an_earlier_generation_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = log_with(dir.path(), 3);
        let (new, _) = log_with(dir.path(), 1);
        // What a reset whose truncation was lost could leave: the new header
        // and record over the start of the old file.
        let mut mixed = old.clone();
        mixed[..new.len()].copy_from_slice(&new);
        let replay = parse_log(dir.path(), &mixed).unwrap();
        assert_eq!(keys(&replay), vec![0]);
    }

    #[test]
    fn a_torn_header_is_an_empty_log_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = log_with(dir.path(), 2);
        for cut in 0..=HEADER_LEN {
            let replay = parse_log(dir.path(), &bytes[..cut]).unwrap();
            assert!(replay.batches.is_empty(), "cut at {cut}");
        }
        let mut header_only = bytes[..HEADER_LEN].to_vec();
        header_only[10] = 0;
        assert!(
            parse_log(dir.path(), &header_only)
                .unwrap()
                .batches
                .is_empty()
        );
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        is_damage(parse_log(dir.path(), &flipped));
    }

    #[test]
    fn a_newer_or_foreign_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, _) = log_with(dir.path(), 1);
        bytes[4] = 9;
        assert!(matches!(
            parse_log(dir.path(), &bytes),
            Err(StoreError::FormatTooNew { found: 9, .. })
        ));
        assert!(matches!(
            parse_log(dir.path(), b"garbage!garbage!garbage!garbage!"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// A format 1 log as the previous build wrote it.
    fn v1_log(batches: &[Batch]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = b"DWAL\x01\0\0\0".to_vec();
        let mut starts = Vec::new();
        for b in batches {
            starts.push(bytes.len());
            let mut payload = Vec::new();
            for op in &b.ops {
                payload.push(op.tree.index() as u8);
                payload.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
                payload.extend_from_slice(&op.key);
                match &op.value {
                    Some(v) => {
                        payload.push(1);
                        payload.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        payload.extend_from_slice(v);
                    }
                    None => payload.push(0),
                }
            }
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32c(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        (bytes, starts)
    }

    #[test]
    fn a_format_1_log_is_read_and_checked_for_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, starts) = v1_log(&[batch(1), batch(2), batch(3)]);
        let replay = parse_log(dir.path(), &bytes).unwrap();
        assert_eq!(keys(&replay), vec![1, 2, 3]);
        assert_eq!(replay.version, 1);
        assert_eq!(replay.store_format, None);
        let torn = parse_log(dir.path(), &bytes[..bytes.len() - 5]).unwrap();
        assert_eq!(keys(&torn), vec![1, 2]);
        let mut flipped = bytes.clone();
        flipped[starts[1] + 20] ^= 0x10;
        is_damage(parse_log(dir.path(), &flipped));
        // Replaced by a format 2 log at the next reset.
        std::fs::write(dir.path().join(WAL_FILE), &bytes).unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.append(&[batch(4)]).unwrap();
        drop(wal);
        let replay = read(dir.path()).unwrap();
        assert_eq!((replay.version, keys(&replay)), (2, vec![4]));
    }

    #[test]
    fn appends_after_a_reset_start_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.append(&[batch(1), batch(2)]).unwrap();
        wal.append(&[batch(3)]).unwrap();
        // Nothing to write, nothing written.
        let len = wal.len();
        wal.append(&[Batch::new()]).unwrap();
        assert_eq!(wal.len(), len);
        let replay = read(dir.path()).unwrap();
        assert_eq!(replay.batches.len(), 2, "one batch per record");
        assert_eq!(replay.batches[0].ops.len(), 4);
        wal.reset(7).unwrap();
        wal.append(&[batch(5)]).unwrap();
        drop(wal);
        let replay = read(dir.path()).unwrap();
        assert_eq!(keys(&replay), vec![5]);
        assert_eq!(replay.store_format, Some(7));
    }

    /// A small seeded generator (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
    }

    fn env_u64(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default)
    }

    /// The deterministic smoke run of the log's fuzzing, on stable Rust: a
    /// real log (24 records of 1 B to 4 KiB) is damaged 10,000 times (bit
    /// flips, truncations, zeroed and random ranges, removed and repeated
    /// ranges, garbage appended, header bytes) and read back. Every read
    /// gives exactly a prefix of the records written or a typed error,
    /// never a panic or another value; a cut, or damage confined to the last
    /// record, is a torn tail (the records before it come back); damage
    /// before an intact last record is refused. `DURABLE_WAL_FUZZ_ITERS` and
    /// `DURABLE_WAL_FUZZ_SEED` set the run.
    #[test]
    fn damaged_logs_read_as_a_prefix_or_a_typed_error() {
        let iterations = env_u64("DURABLE_WAL_FUZZ_ITERS", 10_000);
        let seed = env_u64("DURABLE_WAL_FUZZ_SEED", 0x5EED);
        let mut rng = Rng(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        let mut written = Vec::new();
        let mut starts = Vec::new();
        for i in 0..24u32 {
            let mut b = Batch::new();
            let len = [1, 10, 100, 1000, 4000][i as usize % 5];
            b.put(
                Tree::ALL[i as usize % 6],
                i.to_be_bytes().to_vec(),
                vec![i as u8; len],
            );
            if i % 3 == 0 {
                b.delete(Tree::Active, vec![i as u8; 3]);
            }
            starts.push(HEADER_LEN + wal.len() as usize);
            wal.append(std::slice::from_ref(&b)).unwrap();
            written.push(b);
        }
        drop(wal);
        let log = std::fs::read(dir.path().join(WAL_FILE)).unwrap();
        let last = *starts.last().unwrap();
        let started = std::time::Instant::now();
        let (mut refused, mut torn, mut intact) = (0u64, 0u64, 0u64);
        for iteration in 0..iterations {
            let mut bytes = log.clone();
            // The range of the original log the damage touched, if known.
            let mut touched: Option<(usize, usize)> = None;
            let mut cut: Option<usize> = None;
            for _ in 0..1 + rng.below(3) {
                let len = bytes.len();
                match rng.below(8) {
                    0 => {
                        let at = rng.below(len);
                        bytes[at] ^= 1 << rng.below(8);
                        touched =
                            Some(touched.map_or((at, at + 1), |(a, b)| (a.min(at), b.max(at + 1))));
                    }
                    1 => {
                        let at = rng.below(len + 1);
                        bytes.truncate(at);
                        cut = Some(cut.map_or(at, |c| c.min(at)));
                    }
                    2 | 3 => {
                        let at = rng.below(len);
                        let scale = rng.below(3) * 4;
                        let end = (at + 1 + rng.below(64 << scale)).min(len);
                        let zero = rng.below(2) == 0;
                        for b in &mut bytes[at..end] {
                            *b = if zero { 0 } else { rng.next() as u8 };
                        }
                        touched = Some(touched.map_or((at, end), |(a, b)| (a.min(at), b.max(end))));
                    }
                    4 => {
                        let at = rng.below(len);
                        let end = (at + 1 + rng.below(4096)).min(len);
                        bytes.drain(at..end);
                        touched = Some((0, usize::MAX));
                    }
                    5 => {
                        let at = rng.below(len);
                        let end = (at + 1 + rng.below(4096)).min(len);
                        let copy = bytes[at..end].to_vec();
                        let to = rng.below(len);
                        bytes.splice(to..to, copy);
                        touched = Some((0, usize::MAX));
                    }
                    6 => {
                        let n = 1 + rng.below(300);
                        let zero = rng.below(2) == 0;
                        bytes.extend((0..n).map(|_| if zero { 0 } else { rng.next() as u8 }));
                    }
                    _ => {
                        let at = rng.below(HEADER_LEN.min(len).max(1));
                        if at < len {
                            bytes[at] = rng.next() as u8;
                            touched = Some(
                                touched.map_or((at, at + 1), |(a, b)| (a.min(at), b.max(at + 1))),
                            );
                        }
                    }
                }
            }
            let what = format!("seed {seed}, iteration {iteration}");
            let result = parse_log(dir.path(), &bytes);
            match &result {
                Ok(replay) => {
                    let n = replay.batches.len();
                    assert!(
                        n <= written.len() && replay.batches[..] == written[..n],
                        "{what}: not a prefix of what was written"
                    );
                    if n == written.len() {
                        intact += 1
                    } else {
                        torn += 1
                    }
                }
                Err(StoreError::Corrupt { .. } | StoreError::FormatTooNew { .. }) => refused += 1,
                Err(other) => panic!("{what}: {other:?}"),
            }
            let changed = bytes[..bytes.len().min(log.len())] != log[..bytes.len().min(log.len())];
            match (touched, cut) {
                // Only cut: a torn tail, the records before the cut back.
                (None, Some(at)) if bytes.len() == at => {
                    let whole = starts
                        .iter()
                        .zip(starts.iter().skip(1).chain([&log.len()]))
                        .filter(|&(_, &end)| end <= at)
                        .count();
                    match &result {
                        Ok(replay) => {
                            assert_eq!(replay.batches.len(), whole, "{what}: cut at {at}")
                        }
                        Err(e) if at >= HEADER_LEN => panic!("{what}: cut at {at}: {e:?}"),
                        Err(_) => {}
                    }
                }
                // Damage inside the last record only: torn.
                (Some((a, _)), None) if a >= last && bytes.len() >= log.len() => {
                    let replay = result.as_ref().unwrap_or_else(|e| panic!("{what}: {e:?}"));
                    let n = replay.batches.len();
                    assert!(
                        n == written.len() - 1 || (n == written.len() && !changed),
                        "{what}"
                    );
                }
                // Damage before an intact last record: refused.
                (Some((a, b)), None)
                    if a >= HEADER_LEN && b <= last && bytes.len() >= log.len() && changed =>
                {
                    assert!(
                        matches!(result, Err(StoreError::Corrupt { .. })),
                        "{what}: {result:?}"
                    );
                }
                _ => {}
            }
        }
        eprintln!(
            "{iterations} damaged logs in {:?}: {intact} intact, {torn} torn, {refused} refused",
            started.elapsed()
        );
        assert!(refused > 0 && torn > 0);
    }
}
