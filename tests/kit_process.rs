//! Guards the test kit's crash test with real processes
//! (`durable::testing::ProcessCrashTest`): each crash run is a child
//! process (this test binary, running only the calling test) on a sled
//! store, killed with SIGKILL at the site; the test process resumes what it
//! left. A step whose effect leaks outside its checkpoint (a line appended
//! to a file) is caught where the body ran but was not checkpointed.
#![cfg(unix)]

use std::io::Write;
use std::path::PathBuf;

use durable::prelude::*;
use durable::testing::{CrashMoment, ProcessCrashTest};

#[durable]
async fn ledger(_ctx: &Ctx, entries: Vec<u32>) -> Result<u32, String> {
    let mut total = 0;
    for e in &entries {
        total = step!("add", key = *e, Ok::<_, String>(total + e))?;
    }
    step!("close", Ok::<_, String>(()))?;
    Ok(total)
}

#[tokio::test]
async fn sigkill_at_every_step_then_resume_gives_the_same_output() {
    let report = ProcessCrashTest::new(
        "sigkill_at_every_step_then_resume_gives_the_same_output",
        ledger,
        vec![1, 2, 3],
    )
    .run()
    .await
    .unwrap();
    assert_eq!(report.sites, ["add[1]", "add[2]", "add[3]", "close#0"]);
    assert_eq!(report.runs, 1 + 4 * 2);
    assert_eq!(report.output, "Ok(6)");
    report.assert_ok();
}

/// Appends a line to the file at `path` (an effect outside the engine) and
/// returns how many lines the file has, read outside any step.
#[durable]
async fn appender(_ctx: &Ctx, path: PathBuf) -> Result<usize, String> {
    step!("open", Ok::<_, String>(()))?;
    step!("append", {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        file.write_all(b"line\n").map_err(|e| e.to_string())
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    Ok(text.lines().count())
}

#[tokio::test]
async fn a_leaking_effect_is_caught_across_a_real_kill() {
    // The same path in the test process and in its children (which
    // compute it from their parent's pid).
    let owner = match std::env::var_os(durable::testing::CHILD_ENV) {
        Some(_) => std::os::unix::process::parent_id(),
        None => std::process::id(),
    };
    let dir = std::env::temp_dir().join(format!("durable-kit-appender-{owner}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("effects.txt");
    let reset = {
        let path = path.clone();
        move || {
            let _ = std::fs::remove_file(&path);
        }
    };
    let report = ProcessCrashTest::new(
        "a_leaking_effect_is_caught_across_a_real_kill",
        appender,
        path.clone(),
    )
    .before_each_run(reset)
    .run()
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.sites, ["open#0", "append#0"]);
    assert_eq!(report.output, "Ok(1)");
    assert_eq!(report.failures.len(), 1, "{report}");
    let failure = &report.failures[0];
    assert_eq!(failure.site, "append#0");
    assert_eq!(failure.moment, CrashMoment::BeforeCheckpoint);
    assert!(
        failure.problem.contains("the output differs: Ok(2)"),
        "{failure}"
    );
}
