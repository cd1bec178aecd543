//! The backend's schema: its name (validated, quoted), and the embedded,
//! versioned migrations applied at connect under an advisory lock, so that
//! workers starting together do not race.

use deadpool_postgres::Pool;

use crate::error::{Error, Result, StoreError, UsageError};

use super::io;

/// The migrations, oldest first: (version, SQL). The SQL names tables
/// without a schema; it runs with `search_path` set to the backend's.
/// Versions may have gaps; every one not recorded in the schema's
/// `migrations` table is applied, in this order (so a version added later
/// below the newest applied one still applies).
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_published.sql")),
    (3, include_str!("migrations/0003_paused.sql")),
    (4, include_str!("migrations/0004_queues.sql")),
    (5, include_str!("migrations/0005_schedules.sql")),
    (
        6,
        include_str!("migrations/0006_checkpoints_unreferenced.sql"),
    ),
];

/// The newest schema version this build knows (tests).
#[cfg(test)]
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Longest schema name accepted (the notification channel adds 8 bytes to
/// it and must stay within PostgreSQL's 63).
const MAX_LEN: usize = 48;

/// Checks `schema` (ASCII letters, digits and `_`, not starting with a
/// digit, at most 48 bytes) and returns it quoted for SQL.
pub(super) fn quoted(schema: &str) -> Result<String> {
    let invalid = |reason| {
        Err(Error::Usage(UsageError::InvalidSchema {
            schema: schema.chars().take(80).collect(),
            reason,
        }))
    };
    if schema.is_empty() {
        return invalid("it is empty");
    }
    if schema.len() > MAX_LEN {
        return invalid("it is longer than 48 bytes");
    }
    if !schema
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return invalid("it may hold only ASCII letters, digits and underscores");
    }
    if schema.as_bytes()[0].is_ascii_digit() {
        return invalid("it may not start with a digit");
    }
    if schema.to_ascii_lowercase().starts_with("pg_") {
        return invalid("names starting with pg_ are reserved by PostgreSQL");
    }
    Ok(format!("\"{schema}\""))
}

/// Creates the schema or brings it up to date; refuses one written by a
/// newer build with [`StoreError::FormatTooNew`].
pub(super) async fn migrate(pool: &Pool, schema: &str, quoted: &str) -> Result<()> {
    migrate_with(pool, schema, quoted, MIGRATIONS).await
}

/// [`migrate`] with `migrations` (oldest first) for [`MIGRATIONS`].
pub(super) async fn migrate_with(
    pool: &Pool,
    schema: &str,
    quoted: &str,
    migrations: &[(i32, &str)],
) -> Result<()> {
    let latest = migrations.last().map_or(0, |(v, _)| *v);
    let mut conn = pool.get().await.map_err(super::pool_error)?;
    let tx = conn
        .transaction()
        .await
        .map_err(io("begin the migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("durable.migrate:{schema}")],
    )
    .await
    .map_err(io("lock the schema for migration"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         CREATE TABLE IF NOT EXISTS {quoted}.migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());
         SET LOCAL search_path TO {quoted};"
    ))
    .await
    .map_err(io("create the schema"))?;
    let applied: Vec<i32> = tx
        .query(&format!("SELECT version FROM {quoted}.migrations"), &[])
        .await
        .map_err(io("read the schema version"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let found = applied.iter().copied().max().unwrap_or(0);
    if found > latest {
        return Err(Error::Store(StoreError::FormatTooNew {
            found: found as u32,
            supported: latest as u32,
        }));
    }
    for (version, sql) in migrations.iter().filter(|(v, _)| !applied.contains(v)) {
        tx.batch_execute(sql)
            .await
            .map_err(io("apply a schema migration"))?;
        tx.execute(
            &format!("INSERT INTO {quoted}.migrations (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(io("record a schema migration"))?;
        tracing::info!(durable.schema = %schema, durable.version = version, "schema migrated");
    }
    tx.commit().await.map_err(io("commit the migration"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(quoted("durable").unwrap(), "\"durable\"");
        assert_eq!(quoted("Durable_2").unwrap(), "\"Durable_2\"");
        for bad in ["", "a\"b", "a;b", "1a", "a b", "pg_x", &"x".repeat(49), "é"] {
            assert!(
                matches!(
                    quoted(bad),
                    Err(Error::Usage(UsageError::InvalidSchema { .. }))
                ),
                "{bad:?}"
            );
        }
    }
}
