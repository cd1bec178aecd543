//! Running the `durable` binary from the tests: its exit code and output.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// One run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Its stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Runs the binary with `args` (no colour, no stdin, no target from the
/// environment).
pub async fn durable(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_durable"))
            .args(&args)
            .env_remove("DURABLE_STORE")
            .env_remove("DURABLE_URL")
            .env_remove("DURABLE_TOKEN")
            .env_remove("DURABLE_DATABASE_URL")
            .env_remove("DURABLE_SCHEMA")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run the durable binary");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `durable PREFIX.. ARGS..`, expecting exit code `code`.
pub async fn expect(prefix: &[&str], code: i32, args: &[&str]) -> Run {
    let mut all = prefix.to_vec();
    all.extend_from_slice(args);
    let run = durable(&all).await;
    assert_eq!(
        run.code, code,
        "durable {all:?}\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

/// `durable --store DIR args..`, expecting exit code `code`.
pub async fn store(dir: &Path, code: i32, args: &[&str]) -> Run {
    expect(&["--store", dir.to_str().unwrap()], code, args).await
}
