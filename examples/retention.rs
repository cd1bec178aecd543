//! Store size under a steady load of short workflows, with and without
//! retention: starts `--rate` instances a second for `--seconds`, each two
//! steps with a few hundred bytes of output, and prints every few seconds
//! the instances finished so far (and their rate per hour) against the
//! store's bytes on disk.
//!
//! ```sh
//! cargo run --release --example retention -- --seconds 60 --rate 200 --retention-ms 5000
//! cargo run --release --example retention -- --seconds 60 --rate 200            # retention off
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use durable::prelude::*;

#[durable]
async fn short(_ctx: &Ctx, n: u64) -> Result<String, String> {
    let a = step!("fetch", Ok::<String, String>(format!("{n:0>300}")))?;
    step!("store", Ok::<String, String>(a.chars().rev().collect()))
}

fn flag(name: &str) -> Option<u64> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
}

fn disk_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                disk_bytes(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = flag("--seconds").unwrap_or(30);
    let rate = flag("--rate").unwrap_or(100);
    let retention = flag("--retention-ms").map(Duration::from_millis);
    let dir = tempfile_dir();
    let store = dir.join("store");
    let mut builder = Engine::builder().path(&store).register(short);
    if let Some(age) = retention {
        builder = builder.retention(age);
    }
    let engine = builder.open().await?;
    println!(
        "retention: {}, {rate} instances/s for {seconds} s",
        retention.map_or("off".to_string(), |d| format!("{} ms", d.as_millis()))
    );
    println!(
        "{:>6} {:>10} {:>14} {:>12}",
        "secs", "finished", "per hour", "store bytes"
    );
    let start = Instant::now();
    let mut finished = 0u64;
    let mut n = 0u64;
    let mut next_report = 5;
    while start.elapsed() < Duration::from_secs(seconds) {
        let tick = Instant::now();
        let mut handles = Vec::with_capacity(rate as usize);
        for _ in 0..rate {
            handles.push(engine.start(short, format!("i-{n}"), n).await?);
            n += 1;
        }
        for handle in handles {
            handle.result().await??;
            finished += 1;
        }
        let secs = start.elapsed().as_secs();
        if secs >= next_report {
            next_report += 5;
            println!(
                "{secs:>6} {finished:>10} {:>14.0} {:>12}",
                finished as f64 * 3600.0 / start.elapsed().as_secs_f64(),
                disk_bytes(&store)
            );
        }
        if let Some(left) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            tokio::time::sleep(left).await;
        }
    }
    engine.shutdown().await;
    println!("final store bytes after close: {}", disk_bytes(&store));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("durable-retention-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}
