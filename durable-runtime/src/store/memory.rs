//! [`MemoryStore`]: every tree in memory, nothing on disk.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::{Batch, Entries, Store, Tree};
use crate::error::StoreError;

/// A store that keeps every tree in memory: fast, and gone with the
/// process. For tests and for workflows whose durability does not matter;
/// it is also the embedded store's twin behind the same seam.
///
/// ```
/// # async fn demo() -> durable_runtime::Result<()> {
/// use durable_runtime::{Engine, store::MemoryStore};
///
/// let engine = Engine::builder().store(MemoryStore::new()).open().await?;
/// # engine.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    trees: RwLock<[BTreeMap<Vec<u8>, Vec<u8>>; Tree::ALL.len()]>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A copy of everything stored now (the test kit's crash: what a killed
    /// process leaves behind).
    #[cfg(feature = "testing")]
    pub(crate) fn snapshot(&self) -> MemoryStore {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        MemoryStore {
            trees: RwLock::new(trees.clone()),
        }
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        Ok(trees[tree.index()].get(key).cloned())
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Entries, StoreError> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        Ok(trees[tree.index()]
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_rev(
        &self,
        tree: Tree,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        let map = &trees[tree.index()];
        let range = match before {
            Some(before) => map.range(..before.to_vec()),
            None => map.range::<Vec<u8>, _>(..),
        };
        Ok(range
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, batches: &[Batch]) -> Result<(), StoreError> {
        let mut trees = self.trees.write().unwrap_or_else(|e| e.into_inner());
        for op in batches.iter().flat_map(|b| &b.ops) {
            let map = &mut trees[op.tree.index()];
            match &op.value {
                Some(value) => map.insert(op.key.clone(), value.clone()),
                None => map.remove(&op.key),
            };
        }
        Ok(())
    }
}
