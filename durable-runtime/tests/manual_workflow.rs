//! Guards the runtime API without the macro: a `Workflow` implemented by hand
//! over `Ctx::step` runs, checkpoints, replays, and honours ids as
//! idempotency keys.

use std::sync::Mutex;

use durable_runtime::manifest::{SiteDecl, SiteKind};
use durable_runtime::{BoxFuture, Ctx, Engine, Error, IntoWorkflow, Status, Workflow};

/// Inputs whose step body ran, once per run.
static RUNS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn runs(input: u64) -> usize {
    RUNS.lock().unwrap().iter().filter(|&&i| i == input).count()
}

#[derive(Clone, Copy)]
struct Double;

impl Workflow for Double {
    type Input = u64;
    type Output = Result<u64, String>;
    const NAME: &'static str = "double";
    const SITES: &'static [SiteDecl] = &[SiteDecl {
        name: "double",
        kind: SiteKind::Step,
        guard: None,
    }];

    fn run<'a>(self, ctx: &'a Ctx, input: u64) -> BoxFuture<'a, Self::Output> {
        Box::pin(async move {
            let doubled = ctx
                .step("double", || async {
                    RUNS.lock().unwrap().push(input);
                    Ok::<_, String>(input * 2)
                })
                .await?;
            Ok(doubled + 1)
        })
    }
}

impl IntoWorkflow for Double {
    type Workflow = Self;

    fn into_workflow(self) -> Self {
        self
    }
}

#[tokio::test]
async fn hand_written_workflow_runs_once_per_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .path(dir.path().join("s"))
        .register(Double)
        .open()
        .await
        .unwrap();
    assert_eq!(engine.run(Double, "a", 20).await.unwrap(), Ok(41));
    assert_eq!(engine.run(Double, "a", 20).await.unwrap(), Ok(41));
    assert_eq!(runs(20), 1);
    assert!(matches!(
        engine.status("a").await.unwrap(),
        Status::Completed { .. }
    ));
    match engine.run(Double, "a", 21).await {
        Err(Error::Usage(durable_runtime::UsageError::IdConflict { id, .. })) => {
            assert_eq!(id, "a")
        }
        other => panic!("expected IdConflict, got {other:?}"),
    }
    let history = engine.history("a").await.unwrap();
    assert_eq!(history.steps.len(), 1);
    assert_eq!(history.steps[0].name, "double");
}

#[tokio::test]
async fn store_reopens_after_shutdown_and_refuses_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let engine = Engine::builder()
        .path(&path)
        .register(Double)
        .open()
        .await
        .unwrap();
    match Engine::builder().path(&path).open().await {
        Err(Error::Store(durable_runtime::StoreError::Locked { path: p })) => assert_eq!(p, path),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(engine.run(Double, "b", 1).await.unwrap(), Ok(3));
    engine.shutdown().await;
    let engine = Engine::builder()
        .path(&path)
        .register(Double)
        .open()
        .await
        .unwrap();
    assert_eq!(engine.run(Double, "b", 1).await.unwrap(), Ok(3));
    assert_eq!(runs(1), 1);
}
