//! The embedded default store on sled 0.34.7, the only file that names sled.
//!
//! sled 0.34.7 has durability gaps this file closes (see DESIGN.md):
//! - `Db::flush()` ends in `sync_file_range`, which never asks the device to
//!   flush its cache, so every [`Store::apply`] follows it with an
//!   `fdatasync` of sled's `db` file.
//! - `flush_async()` deadlocks once several callers wait, so it is never
//!   called: the engine's single committer thread calls [`Store::apply`].
//! - A kill during `sled::open` can leave an empty `snap.*.generating` file
//!   that makes the next open fail; such leftovers are removed before open.
//! - sled can panic on damaged files; a panic during open is reported as
//!   [`StoreError::Corrupt`].

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use sled::Transactional;

use super::{Batch, Store, Tree};
use crate::codec::FORMAT_VERSION;
use crate::error::StoreError;

const FORMAT_KEY: &[u8] = b"format_version";

/// The embedded store: a sled database in a directory.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// sled's log file, kept open for `fdatasync`.
    log: File,
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
        let path = path.as_ref().to_path_buf();
        if path.exists() && !path.is_dir() {
            return Err(StoreError::Corrupt {
                path,
                reason: "the path is a file, not a store directory".into(),
            });
        }
        remove_empty_snapshot_leftovers(&path);
        let config = sled::Config::new().path(&path).flush_every_ms(Some(500));
        let opened = catch_unwind(AssertUnwindSafe(|| config.open()));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(map_open_error(&path, e)),
            Err(panic) => {
                return Err(StoreError::Corrupt {
                    path,
                    reason: format!(
                        "sled panicked while opening: {}",
                        crate::step::panic_message(&*panic)
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
        let log = File::open(path.join("db")).map_err(|e| StoreError::Io {
            op: "open the log file for fsync",
            reason: e.to_string(),
        })?;
        let store = SledStore {
            path,
            db,
            trees,
            log,
        };
        store.check_format()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the store occupies on disk, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(|e| io("measure size", e))
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.index()]
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
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(|e| io("read", e))?
            .map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<super::Entries, StoreError> {
        self.tree(tree)
            .scan_prefix(prefix)
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| io("scan", e))
            })
            .collect()
    }

    fn apply(&self, batches: &[Batch]) -> Result<(), StoreError> {
        if batches.iter().all(|b| b.ops.is_empty()) {
            return Ok(());
        }
        let result: sled::transaction::TransactionResult<(), ()> =
            self.trees.as_slice().transaction(|txs| {
                for batch in batches {
                    for op in &batch.ops {
                        let tx = &txs[op.tree.index()];
                        match &op.value {
                            Some(v) => {
                                tx.insert(op.key.as_slice(), v.as_slice())?;
                            }
                            None => {
                                tx.remove(op.key.as_slice())?;
                            }
                        }
                    }
                }
                Ok(())
            });
        match result {
            Ok(()) => {}
            Err(sled::transaction::TransactionError::Storage(e)) => return Err(io("write", e)),
            Err(sled::transaction::TransactionError::Abort(())) => {
                return Err(StoreError::Io {
                    op: "write",
                    reason: "transaction aborted".into(),
                });
            }
        }
        crate::crash::point("store.before_flush");
        self.db.flush().map_err(|e| io("flush", e))?;
        crate::crash::point("store.before_fsync");
        self.log.sync_data().map_err(|e| StoreError::Io {
            op: "fsync",
            reason: e.to_string(),
        })?;
        crate::crash::point("store.after_fsync");
        Ok(())
    }
}

fn io(op: &'static str, e: sled::Error) -> StoreError {
    StoreError::Io {
        op,
        reason: e.to_string(),
    }
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

/// Removes empty `snap.*.generating` files that a kill during open can leave
/// behind (sled #1527): sled would refuse to open the store because of them.
fn remove_empty_snapshot_leftovers(path: &Path) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let empty = entry.metadata().is_ok_and(|m| m.len() == 0);
        if name.starts_with("snap.") && name.ends_with(".generating") && empty {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
