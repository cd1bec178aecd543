//! Damaged write-ahead logs through the public API: a real store, killed
//! with 30 acknowledged writes in its log only, has `durable.wal` damaged
//! (bit flips, truncations, zeroed or random ranges, removed ranges,
//! garbage appended) and is opened. The open succeeds with exactly a prefix
//! of the acknowledged writes (and everything sled held before), or refuses
//! with a typed error and every file unchanged; never a panic, a hang or
//! another value. `DURABLE_WAL_DAMAGE_ITERS` (default 200) and
//! `DURABLE_WAL_DAMAGE_SEED` set the run; the in-memory smoke run of the
//! log's reader is `store::wal::tests::damaged_logs_read_as_a_prefix_or_a_typed_error`
//! (10,000 cases), the fuzz targets are in `fuzz/`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use durable::StoreError;
use durable::store::{Batch, SledStore, Store, Tree};
use support::Rng;

fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_store(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn put(key: String, value: Vec<u8>) -> Batch {
    let mut batch = Batch::new();
    batch.put(Tree::Checkpoints, key.into_bytes(), value);
    batch
}

fn synced_value(i: u8) -> Vec<u8> {
    vec![i; 64]
}

fn logged_value(i: u8) -> Vec<u8> {
    vec![i ^ 0x5A; 50 + 37 * i as usize]
}

const SYNCED: u8 = 10;
const LOGGED: u8 = 30;

/// Bytes of the log's header.
const HEADER: usize = 24;

/// A store as a `kill -9` leaves it: `s0..s9` in sled (a clean close),
/// `w0..w29` acknowledged, in the write-ahead log only.
fn killed_store(root: &Path) -> PathBuf {
    let live = root.join("live");
    {
        let store = SledStore::open(&live).unwrap();
        for i in 0..SYNCED {
            store
                .apply(&[put(format!("s{i}"), synced_value(i))])
                .unwrap();
        }
    }
    let store = SledStore::open(&live).unwrap();
    for i in 0..LOGGED {
        store
            .apply(&[put(format!("w{i}"), logged_value(i))])
            .unwrap();
    }
    let image = root.join("killed");
    copy_store(&live, &image);
    drop(store);
    image
}

/// Damages `log`; returns what was done, and the range changed in place
/// (the length unchanged), if that is what was done.
fn damage(rng: &mut Rng, log: &mut Vec<u8>) -> (String, Option<(usize, usize)>) {
    let len = log.len() as u64;
    match rng.below(6) {
        0 => {
            let at = rng.below(len) as usize;
            let bit = rng.below(8);
            log[at] ^= 1 << bit;
            (
                format!("bit {bit} of byte {at} flipped"),
                Some((at, at + 1)),
            )
        }
        1 => {
            let at = rng.below(len + 1) as usize;
            log.truncate(at);
            (format!("cut at {at}"), None)
        }
        2 => {
            let at = rng.below(len) as usize;
            let end = (at + 1 + rng.below(2048) as usize).min(log.len());
            log[at..end].fill(0);
            (format!("zeroed {at}..{end}"), Some((at, end)))
        }
        3 => {
            let at = rng.below(len) as usize;
            let end = (at + 1 + rng.below(256) as usize).min(log.len());
            for b in &mut log[at..end] {
                *b = rng.next_u64() as u8;
            }
            (format!("random bytes {at}..{end}"), Some((at, end)))
        }
        4 => {
            let at = rng.below(len) as usize;
            let end = (at + 1 + rng.below(1024) as usize).min(log.len());
            log.drain(at..end);
            (format!("removed {at}..{end}"), None)
        }
        _ => {
            let n = 1 + rng.below(4096) as usize;
            let zeros = rng.below(2) == 0;
            log.extend((0..n).map(|_| if zeros { 0 } else { rng.next_u64() as u8 }));
            let kind = if zeros { "zero" } else { "random" };
            (format!("{n} {kind} bytes appended"), None)
        }
    }
}

#[test]
fn a_damaged_log_opens_with_a_prefix_of_the_acknowledged_writes_or_is_refused_unchanged() {
    let iterations: u64 = std::env::var("DURABLE_WAL_DAMAGE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("DURABLE_WAL_DAMAGE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(42);
    let mut rng = Rng::new(seed);
    let root = tempfile::tempdir().unwrap();
    let image = killed_store(root.path());
    let log = std::fs::read(image.join("durable.wal")).unwrap();
    // Where the last record starts: a 24-byte header, then the payload
    // (tree, key length, key, value flag, value length, value).
    let key = format!("w{}", LOGGED - 1);
    let last_record = log.len() - (24 + 1 + 4 + key.len() + 1 + 4 + logged_value(LOGGED - 1).len());
    let started = std::time::Instant::now();
    let (mut opened, mut refused, mut lost) = (0, 0, 0);
    for iteration in 0..iterations {
        let dir = root.path().join(format!("case-{iteration}"));
        copy_store(&image, &dir);
        let mut damaged = log.clone();
        let mut what = Vec::new();
        let mut in_place = None;
        for n in 0..1 + rng.below(2) {
            let (done, range) = damage(&mut rng, &mut damaged);
            what.push(done);
            in_place = if n == 0 { range } else { None };
        }
        let what = format!("seed {seed}, case {iteration}: {}", what.join(", "));
        // Damage between the header and the last record, which stays
        // intact, cannot be a torn write: it must be refused.
        let must_refuse = in_place.is_some_and(|(at, end)| {
            at >= HEADER && end <= last_record && damaged[at..end] != log[at..end]
        });
        std::fs::write(dir.join("durable.wal"), &damaged).unwrap();
        let before = contents(&dir);
        match SledStore::open(&dir) {
            Ok(store) => {
                assert!(
                    !must_refuse,
                    "{what}: damage before the last record was not refused"
                );
                opened += 1;
                for i in 0..SYNCED {
                    let got = store
                        .get(Tree::Checkpoints, format!("s{i}").as_bytes())
                        .unwrap();
                    assert_eq!(got, Some(synced_value(i)), "{what}: s{i}");
                }
                let mut prefix = 0;
                for i in 0..LOGGED {
                    let got = store
                        .get(Tree::Checkpoints, format!("w{i}").as_bytes())
                        .unwrap();
                    match got {
                        Some(v) if prefix == i => {
                            assert!(v == logged_value(i), "{what}: w{i} has another value");
                            prefix += 1;
                        }
                        Some(_) => panic!("{what}: w{i} is back, but w{prefix} is not"),
                        None => {}
                    }
                }
                lost += u64::from(LOGGED - prefix);
                let scanned = store.scan_prefix(Tree::Checkpoints, &[]).unwrap();
                assert_eq!(
                    scanned.len(),
                    usize::from(SYNCED) + usize::from(prefix),
                    "{what}: a value nobody wrote"
                );
            }
            Err(StoreError::Corrupt { reason, .. }) => {
                refused += 1;
                assert!(reason.contains("durable.wal"), "{what}: {reason}");
                let after = contents(&dir);
                assert!(after == before, "{what}: the refused store changed");
            }
            Err(other) => panic!("{what}: {other:?}"),
        }
    }
    eprintln!(
        "{iterations} damaged logs (seed {seed}) in {:?}: {opened} opened ({lost} acknowledged \
         writes cut off with a torn tail), {refused} refused",
        started.elapsed()
    );
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}
