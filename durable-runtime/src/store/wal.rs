//! A write-ahead log in front of an embedded key-value store: the one place a
//! checkpoint becomes durable.
//!
//! [`Wal::append`] writes a group of batches as one record and `fdatasync`s
//! it: one device flush per group, at the cost of the disk's append floor.
//! The store behind it applies the same batches in memory and persists them
//! at its own pace; [`Wal::reset`] empties the log once the store has synced
//! everything (a checkpoint). After a crash, [`Wal::open`] returns every
//! complete record written since the last reset, to be applied again in
//! order (puts and deletes of whole values, so applying a record twice is
//! harmless), and cuts off a torn tail, which was never acknowledged.
//!
//! The file starts with `DWAL` and a `u32 LE` format version; a newer version
//! is refused ([`StoreError::FormatTooNew`]), another file is
//! [`StoreError::Corrupt`]. Record: `len: u32 LE` of the payload, `crc: u32 LE` (CRC-32C of the
//! payload), payload: per op `tree: u8`, `key_len: u32 LE`, key,
//! `has_value: u8`, and when it has one `value_len: u32 LE`, value.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{Batch, Op, Tree};
use crate::error::StoreError;

/// The log file's name in the store's directory.
pub(crate) const WAL_FILE: &str = "durable.wal";

/// The file's first bytes, before the version.
const MAGIC: &[u8; 4] = b"DWAL";

/// The format of records this build writes and reads.
const WAL_VERSION: u32 = 1;

/// Bytes before the first record.
const HEADER_LEN: usize = 8;

/// The largest record accepted when reading back (a guard against garbage).
const MAX_RECORD: usize = 1 << 30;

/// An append-only, checksummed log of batch groups.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    len: u64,
}

fn io(op: &'static str, e: std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        reason: e.to_string(),
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`; returns it with the batches of
    /// every complete record, oldest first. A torn or corrupt tail is cut off.
    pub(super) fn open(dir: &Path) -> Result<(Wal, Vec<Batch>), StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(dir.join(WAL_FILE))
            .map_err(|e| io("open the write-ahead log", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io("read the write-ahead log", e))?;
        if bytes.len() < HEADER_LEN {
            // New, or killed while writing the header: nothing was logged.
            file.set_len(0)
                .map_err(|e| io("reset the write-ahead log", e))?;
            write_header(&mut file)?;
            bytes = header().to_vec();
        }
        if &bytes[..4] != MAGIC {
            return Err(StoreError::Corrupt {
                path: dir.join(WAL_FILE),
                reason: "not a write-ahead log of this library".into(),
            });
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("four bytes"));
        if version > WAL_VERSION {
            return Err(StoreError::FormatTooNew {
                found: version,
                supported: WAL_VERSION,
            });
        }
        let mut batches = Vec::new();
        let mut at = HEADER_LEN;
        while let Some((record, next)) = read_record(&bytes, at) {
            batches.extend(record);
            at = next;
        }
        if at < bytes.len() {
            file.set_len(at as u64)
                .map_err(|e| io("cut the write-ahead log's torn tail", e))?;
            file.sync_all()
                .map_err(|e| io("fsync the write-ahead log", e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| io("seek the write-ahead log", e))?;
        Ok((
            Wal {
                file,
                len: (at - HEADER_LEN) as u64,
            },
            batches,
        ))
    }

    /// Appends `batches` as one record and makes it durable.
    pub(super) fn append(&mut self, batches: &[Batch]) -> Result<(), StoreError> {
        let mut payload = Vec::with_capacity(
            batches
                .iter()
                .map(|b| b.size() + 16 * b.ops.len())
                .sum::<usize>(),
        );
        for op in batches.iter().flat_map(|b| &b.ops) {
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
        let mut record = Vec::with_capacity(8 + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32c(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let written = self.file.write_all(&record).and_then(|()| {
            crate::crash::point("store.before_fsync");
            self.file.sync_data()
        });
        if let Err(e) = written {
            // Whatever part of the record landed is a torn tail: cut it so the
            // next record does not follow garbage.
            let _ = self.file.set_len(HEADER_LEN as u64 + self.len);
            return Err(io("append to the write-ahead log", e));
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Bytes of records in the log.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Empties the log: call only once the store has made every applied
    /// batch durable on its own.
    pub(super) fn reset(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(0)
            .map_err(|e| io("reset the write-ahead log", e))?;
        write_header(&mut self.file)?;
        self.len = 0;
        Ok(())
    }
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4..].copy_from_slice(&WAL_VERSION.to_le_bytes());
    h
}

/// Writes the header to an empty log and makes it durable.
fn write_header(file: &mut File) -> Result<(), StoreError> {
    file.write_all(&header())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write the write-ahead log's header", e))
}

/// Reads the record at `at`: its batch and where the next record starts.
fn read_record(bytes: &[u8], at: usize) -> Option<(Option<Batch>, usize)> {
    let header = bytes.get(at..at + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + 8..at + 8 + len)?;
    if crc32c(payload) != crc {
        return None;
    }
    Some((Some(parse(payload)?), at + 8 + len))
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

/// CRC-32C (Castagnoli), bitwise with a small table.
fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
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
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
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

    #[test]
    fn crc32c_known_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, replay) = Wal::open(dir.path()).unwrap();
        assert!(replay.is_empty());
        wal.append(&[batch(1), batch(2)]).unwrap();
        wal.append(&[batch(3)]).unwrap();
        let good = wal.len();
        drop(wal);
        // A torn third record: header and half a payload.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(WAL_FILE))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let (mut wal, replay) = Wal::open(dir.path()).unwrap();
        let ops: Vec<&Op> = replay.iter().flat_map(|b| &b.ops).collect();
        assert_eq!(ops.len(), 6);
        assert_eq!(replay.len(), 2, "one batch per record");
        assert_eq!(ops[0].key, vec![1; 3]);
        assert_eq!(ops[3].value, None);
        assert_eq!(wal.len(), good);
        assert_eq!(
            std::fs::metadata(dir.path().join(WAL_FILE)).unwrap().len(),
            HEADER_LEN as u64 + good
        );
        wal.reset().unwrap();
        drop(wal);
        assert!(Wal::open(dir.path()).unwrap().1.is_empty());
    }

    #[test]
    fn a_flipped_bit_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.append(&[batch(1)]).unwrap();
        let first = wal.len();
        wal.append(&[batch(2)]).unwrap();
        drop(wal);
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + first as usize + 20] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (_, replay) = Wal::open(dir.path()).unwrap();
        assert_eq!(replay.len(), 1);
    }

    #[test]
    fn a_newer_or_foreign_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Wal::open(dir.path()).unwrap());
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4] = 9;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Wal::open(dir.path()),
            Err(StoreError::FormatTooNew { found: 9, .. })
        ));
        std::fs::write(&path, b"garbage!garbage!").unwrap();
        assert!(matches!(
            Wal::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
