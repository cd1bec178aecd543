//! A real store whose write-ahead log is the input: opening it must succeed
//! (and every tree then reads back) or fail with a typed error, without
//! panicking, hanging, or changing the store's files when it fails.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use durable_runtime::StoreError;
use durable_runtime::store::{Batch, SledStore, Store, Tree};
use libfuzzer_sys::fuzz_target;

/// A store with data in sled, closed cleanly (its log empty), built once.
static TEMPLATE: LazyLock<(tempfile::TempDir, PathBuf)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("template");
    let opened = SledStore::open(&store).unwrap();
    for i in 0u32..50 {
        let mut batch = Batch::new();
        batch.put(
            Tree::Checkpoints,
            i.to_be_bytes().to_vec(),
            vec![i as u8; 100],
        );
        opened.apply(&[batch]).unwrap();
    }
    drop(opened);
    (dir, store)
});

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    copy(&TEMPLATE.1, &dir);
    std::fs::write(dir.join("durable.wal"), data).unwrap();
    match SledStore::open(&dir) {
        Ok(store) => {
            for tree in Tree::ALL {
                store.scan_prefix(tree, &[]).unwrap();
            }
        }
        Err(StoreError::Corrupt { .. } | StoreError::FormatTooNew { .. }) => {
            assert_eq!(std::fs::read(dir.join("durable.wal")).unwrap(), data);
        }
        Err(other) => panic!("unexpected error: {other:?}"),
    }
});
