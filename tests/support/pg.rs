//! A PostgreSQL schema of one test (feature `postgres`): engines that share
//! it and nothing else, and the test's own connection to look inside.
//! Needs PostgreSQL at `DURABLE_TEST_PG` (default the local server); without
//! it a test passes after saying "skipped: no PostgreSQL", unless `CI` is
//! set.

use std::time::Duration;

use durable::prelude::*;

/// The server the tests use.
pub fn url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// An engine's builder on `schema`: a 2 s lease, a 100 ms poll; `listen`:
/// whether it takes other processes' hints (LISTEN/NOTIFY) or polls alone.
pub fn builder_on(schema: &str, listen: bool) -> durable::EngineBuilder {
    Engine::builder()
        .postgres(url())
        .schema(schema)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100))
        .listen(listen)
}

/// A schema of one test, dropped by [`drop_schema`](Schema::drop_schema).
pub struct Schema {
    /// The schema's name.
    pub name: String,
    /// The test's own connection.
    pub client: tokio_postgres::Client,
}

impl Schema {
    /// A fresh schema named `{prefix}_{random}`; `None` (after saying so)
    /// when there is no server and `CI` is not set.
    pub async fn new(prefix: &str) -> Option<Schema> {
        match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let name = format!(
                    "{prefix}_{:016x}",
                    super::mix(nanos ^ u64::from(std::process::id()))
                );
                Some(Schema { name, client })
            }
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!("no PostgreSQL at {}: {e}", url());
                }
                eprintln!("skipped: no PostgreSQL ({e})");
                None
            }
        }
    }

    /// An engine's builder with the listener off: polling alone delivers.
    pub fn builder(&self) -> durable::EngineBuilder {
        builder_on(&self.name, false)
    }

    /// An engine's builder, listening for hints or not.
    pub fn builder_with(&self, listen: bool) -> durable::EngineBuilder {
        builder_on(&self.name, listen)
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        self.client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .await
            .expect("drop the test schema");
    }
}
