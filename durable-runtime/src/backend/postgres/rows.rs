//! The tables of store-wide records (schedules, debounces): a row per
//! name holding the engine's encoded record. A read-modify-write of a row
//! runs in one transaction under an advisory lock on (schema, table, key),
//! so it also serializes against a concurrent insert of an absent row.

use super::Cached;
use super::{Inner, io};
use crate::backend::{Change, DecideRow, Table};
use crate::error::Result;

/// (table name, key column) of `table`.
fn names(table: Table) -> (&'static str, &'static str) {
    match table {
        Table::Schedules => ("schedules", "name"),
        Table::Debounces => ("debounces", "key"),
    }
}

impl Inner {
    /// See [`Backend::rows`](crate::backend::Backend::rows).
    pub(super) async fn rows(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>> {
        let (name, key) = names(table);
        let conn = self.conn().await?;
        let rows = conn
            .query_cached(
                &self.sql(&format!(
                    "SELECT {key}, record FROM {{s}}.{name} ORDER BY {key}"
                )),
                &[],
            )
            .await
            .map_err(io("read a table of schedules or debounces"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// See [`Backend::update_row`](crate::backend::Backend::update_row).
    pub(super) async fn update_row(
        &self,
        table: Table,
        key: &str,
        decide: DecideRow<'_>,
    ) -> Result<Option<Vec<u8>>> {
        let (name, column) = names(table);
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(io("begin a schedule or debounce update"))?;
        tx.batch_execute(&self.tx_settings())
            .await
            .map_err(io("begin a schedule or debounce update"))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("durable.row:{}:{name}:{key}", self.schema)],
        )
        .await
        .map_err(io("lock a schedule or debounce"))?;
        let current: Option<Vec<u8>> = tx
            .query_opt_cached(
                &self.sql(&format!(
                    "SELECT record FROM {{s}}.{name} WHERE {column} = $1"
                )),
                &[&key],
            )
            .await
            .map_err(io("read a schedule or debounce"))?
            .map(|r| r.get(0));
        let after = match decide(current.as_deref())? {
            Change::Keep => return Ok(current),
            Change::Put(value) => {
                tx.execute_cached(
                    &self.sql(&format!(
                        "INSERT INTO {{s}}.{name} ({column}, record) VALUES ($1, $2)
                         ON CONFLICT ({column}) DO UPDATE SET record = EXCLUDED.record"
                    )),
                    &[&key, &value],
                )
                .await
                .map_err(io("write a schedule or debounce"))?;
                Some(value)
            }
            Change::Delete => {
                tx.execute_cached(
                    &self.sql(&format!("DELETE FROM {{s}}.{name} WHERE {column} = $1")),
                    &[&key],
                )
                .await
                .map_err(io("delete a schedule or debounce"))?;
                None
            }
        };
        tx.commit()
            .await
            .map_err(io("commit a schedule or debounce update"))?;
        Ok(after)
    }
}
