//! The embedded backend's tables of store-wide records (schedules,
//! debounces): one sled tree each, keyed by the row's name. A row's
//! read-modify-write holds its lock stripe (one process holds the store).

use super::embedded::Embedded;
use super::{Change, DecideRow, Table};
use crate::error::Result;
use crate::store::Tree;

fn tree(table: Table) -> Tree {
    match table {
        Table::Schedules => Tree::Schedules,
        Table::Debounces => Tree::Debounces,
    }
}

impl Embedded {
    /// See [`Backend::rows`](super::Backend::rows).
    pub(super) fn rows_of(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .journal()
            .rows(tree(table))?
            .into_iter()
            .filter_map(|(k, v)| String::from_utf8(k).ok().map(|k| (k, v)))
            .collect())
    }

    /// See [`Backend::update_row`](super::Backend::update_row).
    pub(super) async fn update_row_of(
        &self,
        table: Table,
        key: &str,
        decide: DecideRow<'_>,
    ) -> Result<Option<Vec<u8>>> {
        // A stripe name no instance id can share exactly (ids may collide
        // on a stripe anyway: it only orders).
        let _stripe = self.row_stripe(&format!("\0{table:?}\0{key}")).lock().await;
        let tree = tree(table);
        let current = self.journal().row(tree, key.as_bytes())?;
        match decide(current.as_deref())? {
            Change::Keep => Ok(current),
            Change::Put(value) => {
                self.journal()
                    .put_row(tree, key.as_bytes().to_vec(), Some(value.clone()))
                    .await?;
                Ok(Some(value))
            }
            Change::Delete => {
                if current.is_some() {
                    self.journal()
                        .put_row(tree, key.as_bytes().to_vec(), None)
                        .await?;
                }
                Ok(None)
            }
        }
    }
}
