//! A failed open never writes, and a sled panic is a typed error: issue 15.
//!
//! The stores here are real: built by the engine, "killed" by copying the
//! live directory (what a `kill -9` leaves is exactly the files as the page
//! cache shows them; nothing of the store runs in the background), then
//! damaged the way a fuzzer found: a message of sled's log replaced by a
//! valid, checksummed message of another page of the same segment, so that
//! sled fails an `assert_eq!` (a panic, in release builds too) when it reads
//! that page. Each test compares every byte of every file of the store
//! before and after, and checks that once the damage is repaired every
//! acknowledged step is still there.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use durable::prelude::*;
use durable::{Status, StoreError};

/// Instances allowed past their `ledger-hold` step.
static RELEASED: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn hold(id: &str) -> Result<(), String> {
    let released = |r: &String| match r.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => r == id,
    };
    while !RELEASED.lock().unwrap().iter().any(released) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn release(id: &str) {
    RELEASED.lock().unwrap().push(id.to_string());
}

#[durable(name = "ledger")]
async fn ledger(ctx: &Ctx, n: u64) -> Result<u64, String> {
    let a = step!("ledger-alpha", async { Ok::<u64, String>(n * 3) }.await)?;
    let b = step!("ledger-beta", async { Ok::<u64, String>(a + 1) }.await)?;
    step!("ledger-hold", hold(ctx.id()).await)?;
    Ok(a + b)
}

/// Bytes found only in keys of the checkpoints tree: the length-prefixed
/// step name (the store's manifests hold the name too, varint-prefixed).
const CHECKPOINT_KEY_NEEDLE: &[u8] = b"\0\0\0\x0cledger-alpha";

fn expected(n: u64) -> u64 {
    n * 3 + n * 3 + 1
}

/// Asserts that every file under `dir` is as in `before`, naming the first
/// difference.
fn assert_unchanged(dir: &Path, before: &BTreeMap<PathBuf, Vec<u8>>, when: &str) {
    let after = support::store_files(dir);
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&after),
        names(before),
        "{when}: files appeared or vanished"
    );
    for (name, bytes) in before {
        let now = &after[name];
        assert!(
            now == bytes,
            "{when}: {} changed ({} bytes, was {})",
            name.display(),
            now.len(),
            bytes.len()
        );
    }
}

/// Copies the store (files and the `blobs` directory) from `from` to `to`.
/// A message of sled 0.34.7's log, as found in its `db` file.
#[derive(Debug, Clone)]
struct Message {
    offset: usize,
    /// Header and body.
    len: usize,
    pid: u64,
}

/// CRC-32 (IEEE), as sled checksums its messages.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// sled's variable-length integer at `at`: the value and its length.
fn varint(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let b0 = *bytes.get(at)?;
    Some(match b0 {
        0..=240 => (u64::from(b0), 1),
        241..=248 => (
            240 + 256 * (u64::from(b0) - 241) + u64::from(*bytes.get(at + 1)?),
            2,
        ),
        249 => (
            2288 + 256 * u64::from(*bytes.get(at + 1)?) + u64::from(*bytes.get(at + 2)?),
            3,
        ),
        other => {
            let n = other as usize - 247;
            let mut le = [0u8; 8];
            le[..n].copy_from_slice(bytes.get(at + 1..at + 1 + n)?);
            (u64::from_le_bytes(le), n + 1)
        }
    })
}

/// The valid messages of sled's log in `db`: each 512 KiB segment starts
/// with a 20-byte header, then messages follow each other (crc32 u32 LE,
/// kind u8, then varints len, segment number, pid, then the body; the crc
/// covers the body and the header after the crc, inverted).
fn messages(db: &[u8]) -> Vec<Message> {
    const SEGMENT: usize = 512 * 1024;
    let mut found = Vec::new();
    for segment_start in (0..db.len()).step_by(SEGMENT) {
        let end = (segment_start + SEGMENT).min(db.len());
        let mut at = segment_start + 20;
        while at + 8 < end {
            let kind = db[at + 4];
            let Some((len, a)) = varint(db, at + 5) else {
                break;
            };
            let Some((_segment, b)) = varint(db, at + 5 + a) else {
                break;
            };
            let Some((pid, c)) = varint(db, at + 5 + a + b) else {
                break;
            };
            let header = 5 + a + b + c;
            let body_end = at + header + len as usize;
            if kind == 0 || body_end > end {
                break;
            }
            let crc = u32::from_le_bytes(db[at..at + 4].try_into().unwrap());
            let actual = crc32(&[&db[at + header..body_end], &db[at + 4..at + header]]) ^ !0;
            if crc != actual {
                break;
            }
            found.push(Message {
                offset: at,
                len: header + len as usize,
                pid,
            });
            at = body_end;
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Damages `db` the way a fuzzer did: every message of every page holding
/// `needle` (the pages of the tree that holds it) becomes a valid,
/// checksummed message of another page: its page id changes (same length,
/// so sled's scan of its log still reads past it) and its checksum is made
/// to match. Returns how many messages were changed.
fn move_pages_holding(db_path: &Path, needle: &[u8]) -> usize {
    let mut db = std::fs::read(db_path).unwrap();
    let all = messages(&db);
    let mut pids: Vec<u64> = all
        .iter()
        .filter(|m| contains(&db[m.offset..m.offset + m.len], needle))
        .map(|m| m.pid)
        .collect();
    pids.sort();
    pids.dedup();
    let mut changed = 0;
    for m in all.iter().filter(|m| pids.contains(&m.pid)) {
        let at = m.offset;
        let (_, a) = varint(&db, at + 5).unwrap();
        let (_, b) = varint(&db, at + 5 + a).unwrap();
        let (pid, c) = varint(&db, at + 5 + a + b).unwrap();
        if c != 1 || pid > 239 {
            continue; // a page id of one byte is enough here
        }
        let header = 5 + a + b + c;
        db[at + 5 + a + b] = (pid + 1) as u8;
        let crc = crc32(&[&db[at + header..at + m.len], &db[at + 4..at + header]]) ^ !0;
        db[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        changed += 1;
    }
    std::fs::write(db_path, &db).unwrap();
    assert!(
        messages(&db).len() == all.len(),
        "the damaged log no longer reads through"
    );
    changed
}

async fn open(dir: &Path) -> durable::Result<Engine> {
    Engine::builder().path(dir).register(ledger).open().await
}

/// A store as a `kill -9` leaves it: `done-0..done-9` finished (and
/// checkpointed into sled by a clean close), `open-0..open-4` with two
/// acknowledged steps each, in the write-ahead log only, the process gone
/// while they wait in their third. Returns the store's directory.
async fn killed_store(root: &Path, tag: &str) -> PathBuf {
    let live = root.join("live");
    let engine = open(&live).await.unwrap();
    for n in 0..10 {
        release(&format!("{tag}done-{n}"));
        assert_eq!(
            engine
                .run(ledger, format!("{tag}done-{n}"), n)
                .await
                .unwrap()
                .unwrap(),
            expected(n)
        );
    }
    engine.shutdown().await;
    let engine = open(&live).await.unwrap();
    for n in 0..5 {
        let _handle = engine
            .start(ledger, format!("{tag}open-{n}"), n)
            .await
            .unwrap();
    }
    support::wait_until("two acknowledged steps per instance", async || {
        for n in 0..5 {
            let id = format!("{tag}open-{n}");
            let history = engine.history(&id).await;
            if !history
                .as_ref()
                .is_ok_and(|h| h.steps.iter().filter(|s| s.finished_at.is_some()).count() == 2)
            {
                return Err((id, history.map(|h| h.steps)));
            }
        }
        Ok(())
    })
    .await;
    let image = root.join("killed");
    support::copy_store(&live, &image);
    engine.shutdown().await;
    image
}

/// sled's files of the store in `dir` (all but our log and lock): what a
/// repair restores from a backup.
fn sled_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = support::store_files(dir);
    files.retain(|name, _| name != Path::new("durable.wal") && name != Path::new("durable.lock"));
    files
}

/// Opens a copy of `dir` repaired (sled's files restored from `backup`,
/// our log as it is) and checks every acknowledged step: `done-*` finished
/// with their outputs, `open-*` resume after their two steps without
/// running them again.
async fn check_repaired(dir: &Path, backup: &BTreeMap<PathBuf, Vec<u8>>, root: &Path, tag: &str) {
    let repaired = root.join("repaired");
    support::copy_store(dir, &repaired);
    for name in sled_files(&repaired).keys() {
        std::fs::remove_file(repaired.join(name)).unwrap();
    }
    for (name, bytes) in backup {
        std::fs::write(repaired.join(name), bytes).unwrap();
    }
    release(&format!("{tag}*"));
    let engine = open(&repaired).await.unwrap();
    for n in 0..10 {
        let id = format!("{tag}done-{n}");
        assert!(
            matches!(engine.status(&id).await.unwrap(), Status::Completed { .. }),
            "{id}"
        );
        let out = engine.attach(ledger, &id).await.unwrap().result().await;
        assert_eq!(out.unwrap().unwrap(), expected(n), "{id}");
    }
    for n in 0..5 {
        let id = format!("{tag}open-{n}");
        let out = engine.attach(ledger, &id).await.unwrap().result().await;
        assert_eq!(out.unwrap().unwrap(), expected(n), "{id}");
        let history = engine.history(&id).await.unwrap();
        for step in &history.steps[..2] {
            assert_eq!(step.attempts, 1, "{id}: {} ran again", step.name);
        }
    }
    engine.shutdown().await;
}

fn corrupt_reason(err: &Error, dir: &Path) -> String {
    match err {
        Error::Store(StoreError::Corrupt { path, reason }) => {
            assert_eq!(path, dir);
            assert!(
                err.to_string().contains(&dir.display().to_string()),
                "{err}"
            );
            reason.clone()
        }
        other => panic!("expected StoreError::Corrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_panic_while_the_log_is_replayed_is_corrupt_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = killed_store(root.path(), "replay-").await;
    let backup = sled_files(&store);
    let replaced = move_pages_holding(&store.join("db"), CHECKPOINT_KEY_NEEDLE);
    assert!(replaced > 0, "no page of the checkpoints tree found in db");
    let before = support::store_files(&store);

    let err = open(&store).await.unwrap_err();
    let reason = corrupt_reason(&err, &store);
    assert!(
        reason.contains("sled panicked while replaying the write-ahead log"),
        "{reason}"
    );
    assert_unchanged(&store, &before, "after the failed open");
    // Opening it again in this process is refused the same way, still
    // without writing.
    let again = open(&store).await.unwrap_err();
    corrupt_reason(&again, &store);
    assert_unchanged(&store, &before, "after a second open");

    check_repaired(&store, &backup, root.path(), "replay-").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_panic_after_open_stops_the_store_without_resetting_its_log() {
    let root = tempfile::tempdir().unwrap();
    let store = killed_store(root.path(), "after-").await;
    // A clean open first (the log's records go into sled, which is then
    // checkpointed): the damage must be met after open, not in it.
    {
        let engine = open(&store).await.unwrap();
        engine.shutdown().await;
    }
    let backup = sled_files(&store);
    let replaced = move_pages_holding(&store.join("db"), CHECKPOINT_KEY_NEEDLE);
    assert!(replaced > 0, "no page of the checkpoints tree found in db");

    let engine = open(&store).await.unwrap();
    // A write that only the log holds, acknowledged: the start of a new
    // instance touches the instances and active trees, not the damaged one.
    let late = engine.start(ledger, "after-late-0", 7).await.unwrap();
    // A status call that reads the damaged page (the late instance's own
    // steps may meet the damage first: either way sled panics once).
    let err = engine.history("after-done-3").await.unwrap_err();
    let reason = corrupt_reason(&err, &store);
    assert!(reason.contains("sled panicked while"), "{reason}");
    // The late instance stops on the broken store; from here on no writer
    // is left, and nothing may be written.
    let _ = support::guarded("the late instance to stop", late.result()).await;
    let before = support::store_files(&store);
    // The store is not used again: a write is refused with the same error.
    let err = engine.start(ledger, "after-late-1", 8).await.unwrap_err();
    corrupt_reason(&err, &store);
    engine.shutdown().await;
    assert_unchanged(&store, &before, "after the engine stopped");

    // Repaired (sled's files from before the damage, the log as the failure
    // left it): every acknowledged step, and the acknowledged start of
    // late-0, which only the log holds.
    check_repaired(&store, &backup, root.path(), "after-").await;
    let engine = open(&root.path().join("repaired")).await.unwrap();
    let out = engine
        .attach(ledger, "after-late-0")
        .await
        .unwrap()
        .result()
        .await;
    assert_eq!(out.unwrap().unwrap(), expected(7));
    engine.shutdown().await;
}
