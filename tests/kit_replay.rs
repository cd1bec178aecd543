//! Guards replay tests (`durable::testing::{Export, replay}`) as a user's
//! tests use them: a history exported from a store to a file replays clean
//! against the code that recorded it; a renamed step, a step whose type
//! changed, or a step the code no longer reaches is reported at its site
//! with the evolution check's message; an unfinished history replays up to
//! its end; a file of another format is refused.

use std::time::Duration;

use durable::prelude::*;
use durable::testing::{Export, KitError, ReplayEnd, TestEngine, replay};

const HOUR: Duration = Duration::from_secs(3_600);

#[durable(name = "order")]
async fn order_v1(_ctx: &Ctx, cents: u64) -> Result<String, String> {
    let charge = step!("charge", Ok::<_, String>(format!("ch_{cents}")))?;
    for i in 0..2u32 {
        step!("ship", Ok::<_, String>(i))?;
    }
    let note: Option<String> = wait_for!("note", timeout = HOUR);
    step!("receipt", Ok::<_, String>(()))?;
    Ok(format!("{charge} {note:?}"))
}

/// `order_v1` with `charge` renamed.
#[durable(name = "order")]
async fn order_renamed(_ctx: &Ctx, cents: u64) -> Result<String, String> {
    let charge = step!("charge-card", Ok::<_, String>(format!("ch_{cents}")))?;
    for i in 0..2u32 {
        step!("ship", Ok::<_, String>(i))?;
    }
    let note: Option<String> = wait_for!("note", timeout = HOUR);
    step!("receipt", Ok::<_, String>(()))?;
    Ok(format!("{charge} {note:?}"))
}

/// `order_v1` with `charge` returning a number.
#[durable(name = "order")]
async fn order_retyped(_ctx: &Ctx, cents: u64) -> Result<String, String> {
    let charge = step!("charge", Ok::<_, String>(cents))?;
    for i in 0..2u32 {
        step!("ship", Ok::<_, String>(i))?;
    }
    let note: Option<String> = wait_for!("note", timeout = HOUR);
    step!("receipt", Ok::<_, String>(()))?;
    Ok(format!("{charge} {note:?}"))
}

/// Records one finished instance of `order_v1` (an event received) into a
/// file and returns its path.
async fn recorded(dir: &std::path::Path) -> std::path::PathBuf {
    let kit = TestEngine::open(Engine::builder().register(order_v1))
        .await
        .unwrap();
    let handle = kit.start(order_v1, "o-1", 250).await.unwrap();
    kit.run_until_idle().await;
    kit.send_event("o-1", "note", "leave at door".to_string())
        .await
        .unwrap();
    kit.run_until_idle().await;
    assert_eq!(
        handle.result().await.unwrap(),
        Ok("ch_250 Some(\"leave at door\")".to_string())
    );
    let path = dir.join("o-1.json");
    let export = kit.export("o-1").await.unwrap();
    assert_eq!(export.workflow(), "order");
    assert_eq!(export.instance(), "o-1");
    assert_eq!(export.checkpoints(), 5);
    export.write_to(&path).unwrap();
    kit.shutdown().await;
    path
}

#[tokio::test]
async fn a_recorded_history_replays_clean_against_the_code_that_recorded_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = recorded(dir.path()).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"format\": \"durable-history\""), "{text}");
    assert!(text.contains("\"version\": 1"), "{text}");
    assert!(text.contains("\"manifest_hash\""), "{text}");
    let report = replay(order_v1, &path).await.unwrap();
    report.assert_clean();
    assert_eq!(report.end, ReplayEnd::Finished);
    assert_eq!(
        report.replayed,
        ["charge#0", "ship#0", "ship#1", "receipt#0"]
    );
}

#[tokio::test]
async fn a_renamed_step_is_reported_at_its_site() {
    let dir = tempfile::tempdir().unwrap();
    let path = recorded(dir.path()).await;
    let report = replay(order_renamed, &path).await.unwrap();
    let divergence = report.divergence.clone().expect("a divergence");
    assert_eq!(report.end, ReplayEnd::Diverged);
    assert_eq!(divergence.site.as_deref(), Some("charge"));
    assert!(
        divergence.message.contains("step `charge` is gone"),
        "{divergence}"
    );
    let panic = std::panic::catch_unwind(|| report.assert_clean()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("at charge:"), "{message}");
}

#[tokio::test]
async fn a_step_of_another_type_is_reported_at_its_site() {
    let dir = tempfile::tempdir().unwrap();
    let path = recorded(dir.path()).await;
    let report = replay(order_retyped, &path).await.unwrap();
    let divergence = report.divergence.expect("a divergence");
    assert_eq!(divergence.site.as_deref(), Some("charge"));
    assert!(
        divergence
            .message
            .contains("step `charge` was written as `str`, the code now reads `u64`"),
        "{divergence}"
    );
}

/// `order_v1`'s code that ships three times: the same manifest, another
/// path through it.
#[durable(name = "order")]
async fn order_ships_once(_ctx: &Ctx, cents: u64) -> Result<String, String> {
    let charge = step!("charge", Ok::<_, String>(format!("ch_{cents}")))?;
    for i in 0..1u32 {
        step!("ship", Ok::<_, String>(i))?;
    }
    let note: Option<String> = wait_for!("note", timeout = HOUR);
    step!("receipt", Ok::<_, String>(()))?;
    Ok(format!("{charge} {note:?}"))
}

#[tokio::test]
async fn a_recorded_step_the_code_no_longer_reaches_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = recorded(dir.path()).await;
    let report = replay(order_ships_once, &path).await.unwrap();
    let divergence = report.divergence.expect("a divergence");
    assert_eq!(divergence.site.as_deref(), Some("ship#1"), "{divergence}");
    assert!(
        divergence
            .message
            .contains("without reaching recorded step(s) \"ship\" occurrence 1"),
        "{divergence}"
    );
}

#[tokio::test]
async fn an_unfinished_history_replays_to_its_end() {
    let kit = TestEngine::open(Engine::builder().register(order_v1))
        .await
        .unwrap();
    let _handle = kit.start(order_v1, "o-2", 9).await.unwrap();
    kit.run_until_idle().await;
    let export = kit.export("o-2").await.unwrap();
    kit.shutdown().await;
    // Through JSON text and back.
    let export = Export::from_json(&export.to_json()).unwrap();
    let report = durable::testing::replay_export(order_v1, &export)
        .await
        .unwrap();
    report.assert_clean();
    assert_eq!(report.end, ReplayEnd::Parked, "it waits for the note");
    assert_eq!(report.replayed, ["charge#0", "ship#0", "ship#1"]);
}

#[tokio::test]
async fn a_file_of_another_format_or_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = recorded(dir.path()).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let newer = text.replacen("\"version\": 1", "\"version\": 2", 1);
    let error = Export::from_json(&newer).unwrap_err();
    assert!(
        matches!(&error, KitError::Format(m) if m.contains("version 2")),
        "{error}"
    );
    assert!(matches!(
        Export::from_json("{\"a\": 1}"),
        Err(KitError::Format(_))
    ));
    let missing = replay(order_v1, dir.path().join("nope.json"))
        .await
        .unwrap_err();
    assert!(matches!(missing, KitError::File { .. }), "{missing}");
    // A history of another workflow.
    let other = text.replace("\"workflow\": \"order\"", "\"workflow\": \"invoice\"");
    let error = durable::testing::replay_export(order_v1, &Export::from_json(&other).unwrap())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("invoice"), "{error}");
}
