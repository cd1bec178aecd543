//! The embedded default store on sled 0.34.7, the only file that names sled.
//!
//! Every [`Store::apply`] is made durable by a write-ahead log of our own
//! (`durable.wal`, see `wal.rs`): the batches are appended to it as one
//! record and `fdatasync`ed, then applied to sled in memory. sled persists
//! them at checkpoints: when the log passes [`CHECKPOINT_BYTES`] (and at
//! open, after the log's records are applied again), sled is flushed, its
//! log and blob files are fsynced, and only then is our log emptied. So a
//! step costs one append and one `fdatasync` (the disk's floor), concurrent
//! steps share it, and what sled loses in a crash the log gives back.
//!
//! sled 0.34.7 has durability gaps this file closes (see DESIGN.md):
//! - `Db::flush()` ends in `sync_file_range`, which never asks the device to
//!   flush its cache, so a checkpoint follows it with an `fdatasync` of
//!   sled's `db` file. sled's own background flush is turned off: sled
//!   writes only when we ask (or when a log buffer fills up), so its I/O
//!   errors reach us.
//! - sled writes values and tree nodes over ~128 KiB to files under `blobs/`
//!   and never fsyncs them (a leaf of 16 values of 20 KiB is enough). A
//!   checkpoint fsyncs the blob files it has not seen before, and the `blobs`
//!   directory, before the `fdatasync` of the log that refers to them, and
//!   before our log (which holds the same values) is emptied.
//! - `flush_async()` deadlocks once several callers wait, so it is never
//!   called: the engine's single committer thread calls [`Store::apply`].
//! - A kill during `sled::open` can leave a `snap.*.generating` file, empty or
//!   half written, that makes the next open fail (sled #1527, #1533). sled
//!   only renames a snapshot into place once it is complete and always
//!   recovers from the previous snapshot plus the log, so such leftovers are
//!   removed before open, under the store's lock.
//! - sled's own lock is taken inside `open`, after it has touched files; this
//!   store first takes an exclusive `flock` on `durable.lock` in the
//!   directory, so a second process gets [`StoreError::Locked`] without
//!   touching anything.
//! - What a killed process wrote but never synced is still in the page cache
//!   and sled reads it back as valid; open fsyncs the log, the blob files and
//!   the directories before the engine builds on it.
//! - After a failed blob write (out of space, say) sled 0.34.7 leaks a log
//!   reservation, and every later flush waits forever, including the one it
//!   runs when its last handle drops. A store that saw an error is closed on
//!   a thread of its own, waited for a bounded time; if sled is wedged, its
//!   handles (and the lock) stay with that thread, and opening the store
//!   again in this process says to restart the process.
//! - sled can panic on damaged files; a panic during open is reported as
//!   [`StoreError::Corrupt`].

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::wal::Wal;
use super::{Batch, Store, Tree};
use crate::codec::FORMAT_VERSION;
use crate::error::StoreError;

const FORMAT_KEY: &[u8] = b"format_version";

/// The file this store locks, in the store's directory.
const LOCK_FILE: &str = "durable.lock";

/// How long after its last change the `blobs` directory must have been
/// listed before its modification time alone can say "nothing new": file
/// system timestamps are coarse (a clock tick), so two files created within
/// one tick leave the same time behind.
const SETTLE: Duration = Duration::from_secs(1);

/// The size of the write-ahead log at which sled is checkpointed and the
/// log emptied: it bounds both the log's disk use and the replay at open.
pub(crate) const CHECKPOINT_BYTES: u64 = 1 << 20;

/// The default bound of sled's page cache (sled's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// How long dropping a store that saw an error may take before sled is
/// taken to be wedged.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Stores of this process whose sled handles could not be closed (see
/// [`SledStore`]'s `Drop`), by directory.
static WEDGED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The embedded store: a sled database in a directory.
pub struct SledStore {
    path: PathBuf,
    /// Taken only by `Drop`.
    handles: Option<Handles>,
    /// sled's log file, kept open for `fdatasync`.
    log: File,
    /// Our write-ahead log: what makes an apply durable.
    wal: Mutex<Wal>,
    /// The blob files already made durable.
    blobs: Mutex<BlobSync>,
    stats: SyncStats,
    /// Set once any operation failed: sled may be wedged.
    failed: AtomicBool,
}

/// sled's handles and the store's lock, dropped together.
struct Handles {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// Holds the `flock` on [`LOCK_FILE`]; dropped (unlocked) last.
    _lock: File,
}

/// Counters of the syncs this store made, for tests.
#[derive(Debug, Default)]
struct SyncStats {
    /// `fdatasync`s of sled's log (at checkpoints).
    log_syncs: AtomicU64,
    /// Appends to the write-ahead log, each ending in an `fdatasync`.
    wal_syncs: AtomicU64,
    /// Checkpoints made.
    checkpoints: AtomicU64,
    /// Blob files fsynced.
    blob_syncs: AtomicU64,
}

/// What is known of the `blobs` directory.
#[derive(Debug)]
struct BlobSync {
    dir: PathBuf,
    /// Names of the blob files known to be durable.
    synced: HashSet<OsString>,
    /// The directory's modification time, once a listing made at least
    /// [`SETTLE`] after it saw every file that time stands for.
    settled: Option<SystemTime>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// Errors: [`StoreError::Locked`] when another process holds it,
    /// [`StoreError::Corrupt`] when its files are damaged,
    /// [`StoreError::FormatTooNew`] when a newer version wrote it.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StoreError> {
        SledStore::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Like [`open`](Self::open), with sled's page cache bounded to about
    /// `cache_bytes` (the memory the store keeps no matter how many
    /// instances it holds).
    pub fn open_with_cache(
        path: impl AsRef<Path>,
        cache_bytes: u64,
    ) -> Result<SledStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        if path.exists() && !path.is_dir() {
            return Err(StoreError::Corrupt {
                path,
                reason: "the path is a file, not a store directory".into(),
            });
        }
        if !path.exists() {
            std::fs::create_dir_all(&path).map_err(|e| os("create the store directory", &e))?;
            if let Some(parent) = path.parent() {
                sync_dir(if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                })?;
            }
        }
        if let Some(reason) = wedged(&path) {
            return Err(StoreError::Io { op: "open", reason });
        }
        let lock = lock(&path)?;
        remove_snapshot_leftovers(&path)?;
        let config = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .cache_capacity(cache_bytes);
        let opened = catch_unwind(AssertUnwindSafe(|| config.open()));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(map_open_error(&path, e)),
            Err(panic) => {
                return Err(StoreError::Corrupt {
                    path,
                    reason: format!(
                        "sled panicked while opening: {}",
                        crate::panic::panic_message(&*panic)
                    ),
                });
            }
        };
        let mut trees = Vec::with_capacity(Tree::ALL.len());
        for tree in Tree::ALL {
            trees.push(
                db.open_tree(tree.name())
                    .map_err(|e| map_open_error(&path, e))?,
            );
        }
        let log = File::open(path.join("db")).map_err(|e| os("open the log file for fsync", &e))?;
        let (wal, replay) = Wal::open(&path)?;
        let store = SledStore {
            wal: Mutex::new(wal),
            blobs: Mutex::new(BlobSync {
                dir: path.join("blobs"),
                synced: HashSet::new(),
                settled: None,
            }),
            path,
            handles: Some(Handles {
                db,
                trees,
                _lock: lock,
            }),
            log,
            stats: SyncStats::default(),
            failed: AtomicBool::new(false),
        };
        store.sync_inherited()?;
        // What was durable in our log but perhaps not in sled: apply it
        // again (puts and deletes of whole values: harmless if sled has it).
        store.failed(store.apply_in_memory(&replay))?;
        store.check_format()?;
        // Then checkpoint, always: the log starts empty, and sled's log has a
        // stable point from the first open on. Without one (a new store
        // killed before sled ever flushed), sled 0.34.7's recovery skips its
        // removal of blob files past the stable point, and the next blob
        // write fails with "File exists".
        {
            let mut wal = store.wal.lock().unwrap_or_else(|e| e.into_inner());
            store.failed(store.checkpoint(&mut wal))?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the store occupies on disk, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.handles()
            .db
            .size_on_disk()
            .map_err(|e| io("measure size", e))
    }

    fn handles(&self) -> &Handles {
        match &self.handles {
            Some(handles) => handles,
            None => unreachable!("only Drop takes the handles"),
        }
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.handles().trees[tree.index()]
    }

    /// Notes a failed operation (sled may be wedged) and passes it on.
    fn failed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Makes durable what an earlier process (perhaps killed) and sled's own
    /// recovery left in the page cache: the log, every blob file and both
    /// directories, before anything is built on them.
    fn sync_inherited(&self) -> Result<(), StoreError> {
        self.sync_blobs()?;
        self.sync_log()?;
        sync_dir(&self.path)
    }

    /// Fsyncs the blob files not yet known durable, then the `blobs`
    /// directory if any was new.
    fn sync_blobs(&self) -> Result<(), StoreError> {
        let mut blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        let modified = match std::fs::metadata(&blobs.dir).and_then(|m| m.modified()) {
            Ok(modified) => modified,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(os("inspect the blobs directory", &e)),
        };
        if blobs.settled == Some(modified) {
            return Ok(());
        }
        let listed_at = SystemTime::now();
        let entries =
            std::fs::read_dir(&blobs.dir).map_err(|e| os("list the blobs directory", &e))?;
        let mut present = HashSet::with_capacity(blobs.synced.len() + 1);
        let mut new = 0;
        for entry in entries {
            let entry = entry.map_err(|e| os("list the blobs directory", &e))?;
            let name = entry.file_name();
            if !blobs.synced.contains(&name) {
                match File::open(entry.path()).and_then(|f| f.sync_data()) {
                    Ok(()) => new += 1,
                    // sled removed it meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(os("fsync a blob file", &e)),
                }
            }
            present.insert(name);
        }
        if new > 0 {
            sync_dir(&blobs.dir)?;
            self.stats.blob_syncs.fetch_add(new, Ordering::Relaxed);
        }
        blobs.synced = present;
        blobs.settled = listed_at
            .duration_since(modified)
            .is_ok_and(|age| age > SETTLE)
            .then_some(modified);
        Ok(())
    }

    fn sync_log(&self) -> Result<(), StoreError> {
        self.log.sync_data().map_err(|e| os("fsync", &e))?;
        self.stats.log_syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let meta = self.tree(Tree::Meta);
        match meta
            .get(FORMAT_KEY)
            .map_err(|e| io("read format version", e))?
        {
            Some(v) => {
                let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("format version record has {} bytes, expected 4", v.len()),
                })?;
                let found = u32::from_be_bytes(bytes);
                if found > u32::from(FORMAT_VERSION) {
                    return Err(StoreError::FormatTooNew {
                        found,
                        supported: u32::from(FORMAT_VERSION),
                    });
                }
                if found < u32::from(FORMAT_VERSION) {
                    return Err(StoreError::FormatTooOld {
                        found,
                        supported: u32::from(FORMAT_VERSION),
                    });
                }
                Ok(())
            }
            None => {
                let mut batch = Batch::new();
                batch.put(
                    Tree::Meta,
                    FORMAT_KEY.to_vec(),
                    u32::from(FORMAT_VERSION).to_be_bytes().to_vec(),
                );
                self.apply(&[batch])
            }
        }
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.tree(tree).get(key).map_err(|e| io("read", e));
        Ok(self.failed(value)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<super::Entries, StoreError> {
        let entries = self
            .tree(tree)
            .scan_prefix(prefix)
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| io("scan", e))
            })
            .collect();
        self.failed(entries)
    }

    fn scan_rev(
        &self,
        tree: Tree,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::Entries, StoreError> {
        let tree = self.tree(tree);
        let range = match before {
            Some(before) => tree.range(..before.to_vec()),
            None => tree.range::<Vec<u8>, _>(..),
        };
        let entries = range
            .rev()
            .take(limit)
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| io("scan", e))
            })
            .collect();
        self.failed(entries)
    }

    fn apply(&self, batches: &[Batch]) -> Result<(), StoreError> {
        let result = self.write(batches);
        self.failed(result)
    }
}

impl SledStore {
    fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
        if batches.iter().all(|b| b.ops.is_empty()) {
            return Ok(());
        }
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        crate::crash::point("store.before_flush");
        wal.append(batches)?;
        self.stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
        crate::crash::point("store.after_fsync");
        self.apply_in_memory(batches)?;
        if wal.len() >= CHECKPOINT_BYTES {
            self.checkpoint(&mut wal)?;
        }
        Ok(())
    }

    /// Applies `batches` to sled, without asking sled to
    /// persist anything: the write-ahead log already holds them.
    fn apply_in_memory(&self, batches: &[Batch]) -> Result<(), StoreError> {
        // Plain inserts, not a sled transaction or batch: those seal sled's
        // log buffer and write it out (`pwrite` + `sync_file_range`) on every
        // commit, a second trip to the device per step. Atomicity and
        // durability come from the write-ahead log: after a crash in the
        // middle of this loop, the log's record is applied again at open.
        let trees = &self.handles().trees;
        for op in batches.iter().flat_map(|b| &b.ops) {
            let tree = &trees[op.tree.index()];
            match &op.value {
                Some(v) => tree.insert(op.key.as_slice(), v.as_slice()).map(drop),
                None => tree.remove(op.key.as_slice()).map(drop),
            }
            .map_err(|e| io("write", e))?;
        }
        Ok(())
    }

    /// Makes everything applied so far durable in sled itself, then empties
    /// the write-ahead log.
    fn checkpoint(&self, wal: &mut Wal) -> Result<(), StoreError> {
        // Writes every log buffer, waiting for writers still filling one, so
        // every blob file the log now refers to is complete on return.
        self.handles().db.flush().map_err(|e| io("flush", e))?;
        // Blobs first: once the log is durable, what it refers to must be.
        self.sync_blobs()?;
        self.sync_log()?;
        crate::crash::point("store.before_wal_reset");
        wal.reset()?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if self.handles.is_none() {
            return;
        }
        if !self.failed.load(Ordering::Relaxed) {
            // A clean close leaves nothing to replay at the next open. If the
            // checkpoint fails, the log keeps everything for that open.
            let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self.checkpoint(&mut wal);
            drop(wal);
            drop(self.handles.take());
            return;
        }
        let Some(handles) = self.handles.take() else {
            return;
        };
        // sled flushes when its last handle drops, and after a failed write
        // that flush may never return: close on a thread of its own, and
        // leave sled there (still holding the lock) if it does not finish.
        let path = canonical(&self.path);
        WEDGED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        let (done, closed) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("durable-sled-close".into())
            .spawn(move || {
                drop(handles);
                WEDGED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|p| p != &path);
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = closed.recv_timeout(CLOSE_TIMEOUT);
        }
    }
}

/// Why the store in `path` cannot be opened by this process, if an earlier
/// handle of it is wedged.
fn wedged(path: &Path) -> Option<String> {
    let path = canonical(path);
    let wedged = WEDGED.lock().unwrap_or_else(|e| e.into_inner());
    wedged.iter().any(|p| p == &path).then(|| {
        "an earlier handle of this store in this process hit an i/o error and sled 0.34.7 \
         cannot close it (a failed write wedges its log); restart the process to open the store again"
            .to_string()
    })
}

/// `path` made absolute, as far as it exists.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn io(op: &'static str, e: sled::Error) -> StoreError {
    StoreError::Io {
        op,
        reason: e.to_string(),
    }
}

fn os(op: &'static str, e: &std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        reason: e.to_string(),
    }
}

/// Fsyncs a directory, so that the files created in it are durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| os("fsync a directory", &e))
}

/// Takes the store's exclusive lock, or fails with [`StoreError::Locked`].
/// An `flock` is released by the kernel when its holder dies, even by
/// `kill -9`, so a crash never leaves a stale lock behind.
fn lock(path: &Path) -> Result<File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path.join(LOCK_FILE))
        .map_err(|e| os("open the lock file", &e))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns for its whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
                StoreError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                os("lock the store", &e)
            });
        }
    }
    Ok(file)
}

fn map_open_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: path.to_path_buf(),
            }
        }
        sled::Error::Io(io) => StoreError::Io {
            op: "open",
            reason: io.to_string(),
        },
        other => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Removes the `snap.*.generating` files a kill during open can leave behind
/// (sled #1527, #1533): sled picks the newest `snap.*` file, so an empty or
/// half-written one would make it refuse the store. A complete one that was
/// not yet renamed into place is redundant: the previous snapshot plus the
/// log recover the same state. Called with the store's lock held.
fn remove_snapshot_leftovers(path: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(path).map_err(|e| os("list the store directory", &e))?;
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())
                .map_err(|e| os("remove a half-written snapshot", &e))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: Vec<u8>) -> Batch {
        let mut batch = Batch::new();
        batch.put(Tree::Checkpoints, key.as_bytes().to_vec(), value);
        batch
    }

    fn blob_files(store: &SledStore) -> Vec<OsString> {
        std::fs::read_dir(store.path.join("blobs"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_apply_ends_in_an_fdatasync_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let before = store.stats.wal_syncs.load(Ordering::Relaxed);
        for i in 0..5 {
            store.apply(&[put(&format!("k{i}"), vec![1; 100])]).unwrap();
        }
        // A group of batches shares one.
        store
            .apply(&[put("a", vec![2; 10]), put("b", vec![3; 10])])
            .unwrap();
        // Nothing to write, nothing to sync.
        store.apply(&[Batch::new()]).unwrap();
        assert_eq!(store.stats.wal_syncs.load(Ordering::Relaxed) - before, 6);
    }

    #[test]
    fn what_only_the_write_ahead_log_holds_is_applied_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        // A process that died after its log append, before sled had any of it.
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&[put("a", vec![1; 10]), put("b", vec![2; 10])])
                .unwrap();
            let mut delete = Batch::new();
            delete.delete(Tree::Checkpoints, b"a".to_vec());
            wal.append(&[delete, put("c", vec![3; 10])]).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get(Tree::Checkpoints, b"a").unwrap(), None);
        assert_eq!(
            store.get(Tree::Checkpoints, b"b").unwrap(),
            Some(vec![2; 10])
        );
        assert_eq!(
            store.get(Tree::Checkpoints, b"c").unwrap(),
            Some(vec![3; 10])
        );
        assert_eq!(store.stats.checkpoints.load(Ordering::Relaxed), 1);
        assert_eq!(
            store.wal.lock().unwrap().len(),
            0,
            "the log starts empty after a checkpoint"
        );
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get(Tree::Checkpoints, b"c").unwrap(),
            Some(vec![3; 10])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_fdatasyncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let committer = crate::committer::Committer::start(store.clone()).unwrap();
        let committer = std::sync::Arc::new(committer);
        let before = store.stats.wal_syncs.load(Ordering::Relaxed);
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64 {
            let committer = std::sync::Arc::clone(&committer);
            tasks.spawn(async move {
                for i in 0..10 {
                    committer
                        .commit(put(&format!("t{t}-{i}"), vec![1; 100]))
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let syncs = store.stats.wal_syncs.load(Ordering::Relaxed) - before;
        assert!(
            syncs < 640 / 4,
            "640 commits took {syncs} fdatasyncs: no group commit"
        );
        assert_eq!(
            store.get(Tree::Checkpoints, b"t63-9").unwrap(),
            Some(vec![1; 100])
        );
        committer.close().await;
    }

    #[test]
    fn blob_files_are_fsynced_before_the_log_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // One value over the threshold: a blob of its own.
        store.apply(&[put("big", vec![7; 300 << 10])]).unwrap();
        // Values far under it: a leaf node of 16 of them is a blob too.
        for i in 0..40 {
            store
                .apply(&[put(&format!("mid-{i:02}"), vec![i as u8; 20 << 10])])
                .unwrap();
            // Until a checkpoint, the values are durable in the log.
            let mut wal = store.wal.lock().unwrap();
            assert!(wal.len() > 0);
            if i % 10 == 9 {
                store.checkpoint(&mut wal).unwrap();
                assert_eq!(wal.len(), 0);
                let synced = store.blobs.lock().unwrap().synced.clone();
                for file in blob_files(&store) {
                    assert!(synced.contains(&file), "blob {file:?} was not fsynced");
                }
            }
        }
        assert!(blob_files(&store).len() >= 2, "{:?}", blob_files(&store));
        assert!(store.stats.blob_syncs.load(Ordering::Relaxed) >= 2);
        assert_eq!(
            store.get(Tree::Checkpoints, b"big").unwrap(),
            Some(vec![7; 300 << 10])
        );
    }

    #[test]
    fn blobs_left_by_an_earlier_process_are_fsynced_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.apply(&[put("big", vec![7; 300 << 10])]).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let files = blob_files(&store);
        assert!(!files.is_empty());
        let synced = store.blobs.lock().unwrap().synced.clone();
        assert!(files.iter().all(|f| synced.contains(f)));
        assert!(store.stats.blob_syncs.load(Ordering::Relaxed) >= 1);
    }

    /// Builds a store with data and a snapshot, and returns the snapshot's name.
    fn store_with_snapshot(dir: &Path) -> String {
        for round in 0..2 {
            let store = SledStore::open(dir).unwrap();
            for i in 0..50 {
                store
                    .apply(&[put(&format!("r{round}-{i}"), vec![i as u8; 500])])
                    .unwrap();
            }
        }
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
            .expect("sled wrote a snapshot at open")
    }

    #[test]
    fn half_written_snapshot_leftovers_do_not_make_the_store_unopenable() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = store_with_snapshot(dir.path());
        let bytes = std::fs::read(dir.path().join(&snapshot)).unwrap();
        // What a kill during open leaves: a newer snapshot being generated,
        // cut short (or empty, below).
        let half = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();

        // sled alone refuses such a store (removing only empty leftovers,
        // as this file once did, is not enough).
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
            }
        }
        std::fs::create_dir(copy.path().join("blobs")).unwrap();
        assert!(
            sled::Config::new().path(copy.path()).open().is_err(),
            "sled 0.34.7 opened a store with a half-written snapshot: the workaround may be obsolete"
        );

        let empty = dir.path().join("snap.7FFFFFFFFFFFFFF0.generating");
        std::fs::write(&empty, b"").unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert!(!half.exists() && !empty.exists());
        for round in 0..2 {
            for i in 0..50u8 {
                assert_eq!(
                    store
                        .get(Tree::Checkpoints, format!("r{round}-{i}").as_bytes())
                        .unwrap(),
                    Some(vec![i; 500])
                );
            }
        }
    }

    #[test]
    fn a_second_open_is_locked_and_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledStore::open(dir.path()).unwrap();
        // A snapshot the holder might be writing right now.
        let generating = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&generating, b"in progress").unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        match &err {
            StoreError::Locked { path } => assert_eq!(path, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("stop the other process"), "{text}");
        assert!(
            generating.exists(),
            "a locked-out open removed the holder's file"
        );
    }
}
