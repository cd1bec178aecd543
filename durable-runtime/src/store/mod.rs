//! The device seam beneath the embedded backend: byte records in a few
//! named trees, atomic and durable batches. (The engine itself talks to the
//! instance-level backend seam, which adds claims and fenced writes; the
//! embedded backend runs over this.)
//!
//! [`SledStore`] is the embedded default. [`MemoryStore`] keeps everything in
//! memory (tests, and a twin that proves the engine names no sled type).
//! Another single-process device implements [`Store`] and is handed to
//! [`EngineBuilder::store`](crate::EngineBuilder::store). A store is held by
//! one process; sharing one store among many processes is the PostgreSQL
//! backend's job, not this seam's.
//!
//! The engine drives every write through one committer thread that gathers
//! the batches of concurrent instances and hands them to [`Store::apply`] in
//! one call (group commit), so an implementation pays for one device flush per
//! call, not per batch.

mod memory;
mod sled;
mod wal;

pub use self::memory::MemoryStore;
use std::fs::File;
use std::path::Path;

pub use self::sled::{DEFAULT_CACHE_BYTES, SledStore};
use crate::error::StoreError;

/// Fsyncs `file` (at `path`), or only its data when `data_only`. Every
/// fsync of the embedded store goes through here, so tests can watch and
/// fail them.
pub(crate) fn fsync(file: &File, path: &Path, data_only: bool) -> std::io::Result<()> {
    #[cfg(test)]
    hooks::before_sync(path)?;
    #[cfg(not(test))]
    let _ = path;
    if data_only {
        file.sync_data()
    } else {
        file.sync_all()
    }?;
    #[cfg(test)]
    hooks::after_sync(path);
    Ok(())
}

/// Fsyncs a directory, so that the files created, renamed or removed in it
/// are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| fsync(&d, dir, false))
        .map_err(|e| StoreError::io("fsync a directory", e))
}

/// Entry points of the fuzz targets in `fuzz/` (feature `fuzzing`); not part
/// of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    use std::path::Path;

    use crate::error::StoreError;

    /// Reads `bytes` as the store's write-ahead log (`durable.wal`): the
    /// number of batches it holds, or the typed error. Never writes.
    pub fn wal(bytes: &[u8]) -> Result<usize, StoreError> {
        let replay = super::wal::parse_log(Path::new("fuzz"), bytes)?;
        assert!(replay.torn as usize <= bytes.len());
        Ok(replay.batches.len())
    }
}

/// Test hooks of the embedded store: watch or fail its fsyncs, watch the
/// stages of its open. Per thread, so tests running in parallel do not see
/// each other's.
#[cfg(test)]
pub(crate) mod hooks {
    use std::cell::RefCell;
    use std::path::Path;

    type SyncFail = Box<dyn FnMut(&Path) -> Option<std::io::Error>>;
    type Watch = Box<dyn FnMut(&Path)>;
    type StageWatch = Box<dyn FnMut(&str, &Path)>;

    thread_local! {
        static FAIL: RefCell<Option<SyncFail>> = RefCell::new(None);
        static SYNCED: RefCell<Option<Watch>> = RefCell::new(None);
        static STAGE: RefCell<Option<StageWatch>> = RefCell::new(None);
        static FORMAT: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
    }

    /// Until [`clear`], the store reads formats up to `format` (a newer
    /// build).
    pub(crate) fn read_formats_up_to(format: u32) {
        FORMAT.with(|f| f.set(Some(format)));
    }

    pub(crate) fn supported_format() -> Option<u32> {
        FORMAT.with(|f| f.get())
    }

    /// Until [`clear`], `fail` decides for each fsync (by path) whether it
    /// fails, and with which error.
    pub(crate) fn fail_syncs(fail: impl FnMut(&Path) -> Option<std::io::Error> + 'static) {
        FAIL.with(|f| *f.borrow_mut() = Some(Box::new(fail)));
    }

    /// Until [`clear`], `watch` sees each fsync that succeeded.
    pub(crate) fn watch_syncs(watch: impl FnMut(&Path) + 'static) {
        SYNCED.with(|f| *f.borrow_mut() = Some(Box::new(watch)));
    }

    /// Until [`clear`], `watch` sees each stage the open reaches, with the
    /// store's directory.
    pub(crate) fn watch_stages(watch: impl FnMut(&str, &Path) + 'static) {
        STAGE.with(|f| *f.borrow_mut() = Some(Box::new(watch)));
    }

    /// Removes every hook of this thread.
    pub(crate) fn clear() {
        FAIL.with(|f| f.borrow_mut().take());
        SYNCED.with(|f| f.borrow_mut().take());
        STAGE.with(|f| f.borrow_mut().take());
        FORMAT.with(|f| f.set(None));
    }

    pub(super) fn before_sync(path: &Path) -> std::io::Result<()> {
        match FAIL.with(|f| f.borrow_mut().as_mut().and_then(|fail| fail(path))) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(super) fn after_sync(path: &Path) {
        SYNCED.with(|f| {
            if let Some(watch) = f.borrow_mut().as_mut() {
                watch(path)
            }
        });
    }

    pub(crate) fn stage(stage: &str, dir: &Path) {
        STAGE.with(|f| {
            if let Some(watch) = f.borrow_mut().as_mut() {
                watch(stage, dir)
            }
        });
    }
}

/// The trees (tables) the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tree {
    /// Store-wide facts such as the format version.
    Meta,
    /// One record per instance, keyed by id.
    Instances,
    /// The ids of unfinished instances, for recovery at open.
    Active,
    /// One record per step occurrence, keyed by (id, name, occurrence).
    Checkpoints,
    /// What each parked (sleeping or waiting) instance waits for, keyed by id.
    Timers,
    /// Events sent to instances, keyed by (id, name, sequence number).
    Events,
    /// An index of instances by creation time: (milliseconds, id), empty values.
    Created,
    /// State published by instances (`Ctx::set_event`), keyed by (id, key).
    Published,
    /// The keys of idempotent sends (`Engine::send_event_with_key`),
    /// keyed by (id, key).
    SendKeys,
    /// Stream entries (`Ctx::write_stream`), keyed by (id, key, offset).
    Streams,
    /// Schedules (`Engine::add_schedule`), keyed by name.
    Schedules,
    /// Pending debounces (`Engine::debounce`), keyed by debounce key.
    Debounces,
}

impl Tree {
    /// Every tree, in a fixed order.
    pub const ALL: [Tree; 12] = [
        Tree::Meta,
        Tree::Instances,
        Tree::Active,
        Tree::Checkpoints,
        Tree::Timers,
        Tree::Events,
        Tree::Created,
        Tree::Published,
        Tree::SendKeys,
        Tree::Streams,
        Tree::Schedules,
        Tree::Debounces,
    ];

    /// A stable name for the tree.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Instances => "instances",
            Tree::Active => "active",
            Tree::Checkpoints => "checkpoints",
            Tree::Timers => "timers",
            Tree::Events => "events",
            Tree::Created => "created",
            Tree::Published => "published",
            Tree::SendKeys => "send_keys",
            Tree::Streams => "streams",
            Tree::Schedules => "schedules",
            Tree::Debounces => "debounces",
        }
    }

    /// The tree's position in [`Tree::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One write in a [`Batch`]: a put, or a delete when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The tree written.
    pub tree: Tree,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// Writes that must land together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, tree: Tree, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op {
            tree,
            key,
            value: Some(value),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, tree: Tree, key: Vec<u8>) -> &mut Self {
        self.ops.push(Op {
            tree,
            key,
            value: None,
        });
        self
    }

    /// Total bytes of keys and values, for accounting.
    pub fn size(&self) -> usize {
        self.ops
            .iter()
            .map(|op| op.key.len() + op.value.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

/// Entries returned by [`Store::scan_prefix`]: (key, value) in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A key-value store the engine can drive.
///
/// Implementations must make each [`Batch`] atomic and must not return from
/// [`apply`](Store::apply) before every batch it was given is durable: on the
/// device, not merely in a cache, so that it survives a process kill and a
/// power loss. Reads must see every applied batch.
pub trait Store: Send + Sync + 'static {
    /// Reads one value.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Reads every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Entries, StoreError>;

    /// Reads up to `limit` entries in descending key order, starting below
    /// `before` (exclusive) when given, else at the last key. The default
    /// scans the whole tree; stores with ordered iteration override it.
    fn scan_rev(
        &self,
        tree: Tree,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let mut all = self.scan_prefix(tree, &[])?;
        if let Some(before) = before {
            all.retain(|(k, _)| k.as_slice() < before);
        }
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    /// Applies the batches, each atomically, and makes all of them durable
    /// before returning. On error, none of them may be reported durable.
    fn apply(&self, batches: &[Batch]) -> Result<(), StoreError>;
}
