//! Commit speed against a hand-rolled checkpoint table (one autocommitted
//! INSERT per step). Prints numbers, asserts nothing about them; ignored
//! by default: `cargo test -p durable-runtime --features postgres --lib
//! postgres::tests::speed -- --ignored --nocapture`.

use std::time::Instant;

use super::*;
use crate::backend::Write;

const STEPS: usize = 40;

async fn hand_rolled(db: &TestDb, in_flight: usize) -> f64 {
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hand (id text, name text, occ int, value bytea,
             PRIMARY KEY (id, name, occ))",
        )
        .await
        .unwrap();
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(url());
    config.pool = Some(deadpool_postgres::PoolConfig::new(8));
    let pool = config
        .create_pool(Some(deadpool_postgres::Runtime::Tokio1), NoTls)
        .unwrap();
    let schema = db.schema.clone();
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|t| {
            let pool = pool.clone();
            let schema = schema.clone();
            tokio::spawn(async move {
                for step in 0..STEPS {
                    let conn = pool.get().await.unwrap();
                    let insert = conn
                        .prepare_cached(&format!(
                            "INSERT INTO \"{schema}\".hand VALUES ($1, $2, $3, $4)"
                        ))
                        .await
                        .unwrap();
                    conn.execute(
                        &insert,
                        &[
                            &format!("h{in_flight}-{t}"),
                            &"s",
                            &(step as i32),
                            &vec![7u8; 64],
                        ],
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

async fn ours(db: &TestDb, backend: &Arc<PgBackend>, in_flight: usize) -> f64 {
    let mut leases = Vec::new();
    for t in 0..in_flight {
        leases.push(create(backend, &format!("o{in_flight}-{t}")).await);
    }
    let _ = db;
    let started = Instant::now();
    let tasks: Vec<_> = leases
        .into_iter()
        .enumerate()
        .map(|(t, lease)| {
            let backend = Arc::clone(backend);
            tokio::spawn(async move {
                for step in 0..STEPS {
                    let record = step_record(step as u32);
                    backend
                        .commit(
                            &format!("o{in_flight}-{t}"),
                            lease,
                            Write::Checkpoint {
                                record,
                                progress: true,
                            },
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

fn step_record(occurrence: u32) -> crate::records::CheckpointRecord {
    step("s", occurrence, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints speed numbers"]
async fn commit_speed_against_a_hand_rolled_table() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let backend = Arc::new(db.backend().await);
    for in_flight in [1, 16, 64, 256] {
        let hand = hand_rolled(&db, in_flight).await;
        let durable = ours(&db, &backend, in_flight).await;
        let steps = (in_flight * STEPS) as f64;
        let committer = &backend.inner().committer.stats;
        println!(
            "{in_flight:>3} in flight: hand-rolled {:>7.0} steps/s ({:.3} ms/step each), backend {:>7.0} steps/s ({:.3} ms/step each); groups so far {}, writes {}",
            steps / hand,
            hand * 1000.0 / STEPS as f64,
            steps / durable,
            durable * 1000.0 / STEPS as f64,
            committer.groups.load(std::sync::atomic::Ordering::Relaxed),
            committer.writes.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    backend.close().await;
}
