//! The statements of the group commit and of a claim round find their
//! rows by key or through partial indexes at any size of the tables: their
//! plans are made once per connection and kept, on whatever the tables
//! hold then (often nothing), and must never read a table whole.

use super::*;
use crate::backend::postgres::batch::{AWAITED_EVENTS, FENCE, UPDATE_ROWS, UPSERT_CHECKPOINTS};
use crate::backend::postgres::claims::claim_due_sql;

/// The highest `$n` in `sql`.
fn parameters(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn kept_plans_read_no_table_whole() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    // Creates the schema: every table empty, as a new deployment's.
    let backend = db.backend().await;
    let inner = backend.inner();
    let client = db.client().await;
    client
        .batch_execute(&format!("BEGIN; {}", inner.group_tx_settings()))
        .await
        .unwrap();
    let claim_due = claim_due_sql();
    for (name, sql) in [
        ("fence", FENCE),
        ("awaited_events", AWAITED_EVENTS),
        ("upsert_checkpoints", UPSERT_CHECKPOINTS),
        ("update_rows", UPDATE_ROWS),
        ("claim_due", claim_due.as_str()),
    ] {
        let sql = inner.sql(sql);
        client
            .batch_execute(&format!("PREPARE {name} AS {sql}"))
            .await
            .unwrap();
        let nulls = vec!["NULL"; parameters(&sql)].join(", ");
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN EXECUTE {name}({nulls})"), &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(
            !plan.iter().any(|line| line.contains("Seq Scan")),
            "{name} reads a table whole:\n{}",
            plan.join("\n")
        );
    }
    client.batch_execute("ROLLBACK").await.unwrap();
}
