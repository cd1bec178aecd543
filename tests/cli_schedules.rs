//! `durable schedules`: the command line lists a store's cron schedules
//! (table and `--json`).

#[path = "ops_fixture/run.rs"]
mod run;

use durable::prelude::*;
use durable::{Missed, Schedule, Tick};
use run::*;

#[durable]
async fn report(_ctx: &Ctx, tick: Tick) -> Result<u64, String> {
    step!("render", async { Ok::<_, String>(tick.at_ms) }.await)
}

#[tokio::test]
async fn the_command_line_lists_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let empty = store(dir.path(), 0, &["schedules"]).await;
    assert_eq!(empty.stdout, "no schedules\n");
    let engine = Engine::builder()
        .path(dir.path())
        .register(report)
        .open()
        .await
        .unwrap();
    let s = Schedule::new("nightly", "0 3 * * *")
        .unwrap()
        .missed(Missed::RunAll);
    engine.add_schedule(report, s).await.unwrap();
    engine
        .add_schedule(report, Schedule::new("hourly", "0 * * * *").unwrap())
        .await
        .unwrap();
    engine.pause_schedule("hourly").await.unwrap();
    engine.shutdown().await;

    let table = store(dir.path(), 0, &["schedules"]).await.stdout;
    let header = table.lines().next().unwrap();
    for column in ["NAME", "WORKFLOW", "CRON", "MISSED", "STATE", "NEXT TICK"] {
        assert!(header.contains(column), "{table}");
    }
    let nightly = table.lines().find(|l| l.starts_with("nightly ")).unwrap();
    assert!(
        nightly.contains("0 3 * * *") && nightly.contains("RunAll"),
        "{nightly}"
    );
    assert!(
        nightly.contains("active") && nightly.contains("03:00:00"),
        "{nightly}"
    );
    let hourly = table.lines().find(|l| l.starts_with("hourly ")).unwrap();
    assert!(hourly.contains("paused"), "{hourly}");

    let doc = store(dir.path(), 0, &["schedules", "--json"]).await.json();
    let all = doc["schedules"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["name"], "hourly");
    assert_eq!(all[0]["paused"], true);
    assert_eq!(all[1]["workflow"], "report");
    assert!(all[1]["next_tick_ms"].as_u64().unwrap() % 86_400_000 == 3 * 3_600_000);
}
