//! Crash at every step with real processes: [`ProcessCrashTest`] (Unix).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::crash::{Driven, INSTANCE, MakeBuilder, OnWait, drive, resume_and_judge};
use super::{CrashFailure, CrashMoment, CrashReport, Event, KitError, TestEngine, test_clock};
use crate::engine::{Engine, EngineBuilder};
use crate::hooks::{CrashPlan, Hooks};
use crate::workflow::{IntoWorkflow, Workflow};

type In<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Input;
type Out<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Output;

/// The environment variable that makes a test process the child of a
/// [`ProcessCrashTest`]: `test name`, store directory, site index and
/// moment, separated by tabs.
pub const CHILD_ENV: &str = "DURABLE_KIT_CRASH_CHILD";

/// The file in a crash run's store directory where the child appends the
/// label of each step body it runs.
const BODIES: &str = "kit-bodies.txt";

/// Crash at every step with real processes: like
/// [`CrashTest`](super::CrashTest), but each crash run is a child process
/// (the test binary itself, running only this test) on the embedded sled
/// store in a temporary directory, which kills itself with `SIGKILL` at the
/// site; the test process then opens the store the child left, resumes the
/// instance to its end and compares. Unix only.
///
/// The test that runs it must be a plain test that the test binary can run
/// by its exact name, and give that name: the child runs the same test,
/// which sees [`CHILD_ENV`] and plays the child's part instead.
///
/// ```no_run
/// use durable_runtime::testing::ProcessCrashTest;
/// # #[derive(Clone, Copy)] struct Order;
/// # impl durable_runtime::Workflow for Order {
/// #     type Input = u32; type Output = u32; const NAME: &'static str = "order";
/// #     const SITES: &'static [durable_runtime::manifest::SiteDecl] = &[];
/// #     fn run<'a>(self, _: &'a durable_runtime::Ctx, n: u32) -> durable_runtime::BoxFuture<'a, u32> { Box::pin(async move { n }) }
/// # }
/// # impl durable_runtime::IntoWorkflow for Order { type Workflow = Self; fn into_workflow(self) -> Self { self } }
///
/// // In tests/crash_order.rs:
/// #[tokio::test]
/// async fn order_survives_sigkill_at_every_step() {
///     // The name of this test, as `cargo test -- --exact NAME` runs it.
///     let report = ProcessCrashTest::new("order_survives_sigkill_at_every_step", Order, 7)
///         .run()
///         .await
///         .unwrap();
///     report.assert_ok();
/// }
/// ```
pub struct ProcessCrashTest<I: IntoWorkflow> {
    test: String,
    workflow: I,
    input: In<I>,
    builder: MakeBuilder,
    on_wait: Option<OnWait>,
    before_each_run: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl<I: IntoWorkflow> fmt::Debug for ProcessCrashTest<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessCrashTest")
            .field("test", &self.test)
            .field("workflow", &<I::Workflow as Workflow>::NAME)
            .finish_non_exhaustive()
    }
}

impl<I> ProcessCrashTest<I>
where
    I: IntoWorkflow,
    In<I>: Clone,
    Out<I>: PartialEq + fmt::Debug,
{
    /// A crash test of `workflow` with `input`, run from the test named
    /// `test` (its path within the test binary, as `--exact` matches it:
    /// `name`, or `module::name`).
    pub fn new(test: impl Into<String>, workflow: I, input: In<I>) -> Self {
        ProcessCrashTest {
            test: test.into(),
            workflow,
            input,
            builder: Arc::new(move || Engine::builder().register(workflow)),
            on_wait: None,
            before_each_run: None,
        }
    }

    /// Calls `reset` in the test process before the clean run and before
    /// each child is started: to put back state outside the workflow that
    /// its steps change (state the child shares: files, a database).
    pub fn before_each_run(mut self, reset: impl Fn() + Send + Sync + 'static) -> Self {
        self.before_each_run = Some(Arc::new(reset));
        self
    }

    /// Builds each engine with `make`; see
    /// [`CrashTest::engine`](super::CrashTest::engine). The kit sets the
    /// store's path and the clock.
    pub fn engine(mut self, make: impl Fn() -> EngineBuilder + Send + Sync + 'static) -> Self {
        self.builder = Arc::new(make);
        self
    }

    /// Answers the instance's waits; see
    /// [`CrashTest::on_wait`](super::CrashTest::on_wait).
    pub fn on_wait(
        mut self,
        answer: impl Fn(&str) -> Option<Event> + Send + Sync + 'static,
    ) -> Self {
        self.on_wait = Some(Arc::new(answer));
        self
    }

    /// In the test process: the clean run (in process, on a sled store in
    /// a temporary directory), then one child process per site and moment,
    /// each checked after it died. In a child (see [`CHILD_ENV`]): runs
    /// until the planned site and kills the process; it never returns.
    pub async fn run(self) -> Result<CrashReport, KitError> {
        if let Ok(spec) = std::env::var(CHILD_ENV)
            && spec.split('\t').next() == Some(self.test.as_str())
        {
            let outcome = self.child(&spec).await;
            // The site was not reached, or the child could not run.
            eprintln!("durable test kit child: no crash: {outcome:?}");
            std::process::exit(3);
        }
        let base = std::env::temp_dir().join(format!(
            "durable-kit-{}-{}",
            std::process::id(),
            <I::Workflow as Workflow>::NAME
        ));
        let result = self.parent(&base).await;
        let _ = std::fs::remove_dir_all(&base);
        result
    }

    async fn parent(&self, base: &Path) -> Result<CrashReport, KitError> {
        if let Some(reset) = &self.before_each_run {
            reset();
        }
        let hooks = Arc::new(Hooks::default());
        let kit = self.open(&base.join("clean"), Arc::clone(&hooks)).await?;
        let handle = kit
            .start(self.workflow, INSTANCE, self.input.clone())
            .await?;
        let driven = drive(
            &kit,
            INSTANCE,
            handle,
            self.on_wait.as_ref(),
            "the clean run",
        )
        .await;
        kit.shutdown().await;
        let clean = match driven? {
            Driven::Finished(output) => output?,
            Driven::Crashed => unreachable!("no crash is planned in the clean run"),
        };
        let sites = hooks.sites();
        let clean_runs = hooks.site_runs();
        let mut report = CrashReport {
            output: format!("{clean:?}"),
            sites: sites.clone(),
            runs: 1,
            failures: Vec::new(),
        };
        for (index, site) in sites.iter().enumerate() {
            for moment in [CrashMoment::BeforeCheckpoint, CrashMoment::AfterCheckpoint] {
                report.runs += 1;
                let dir = base.join(format!("site-{index}-{}", moment_name(moment)));
                let problem = match self
                    .crash_run(&dir, index, moment, &clean, &clean_runs)
                    .await
                {
                    Ok(problem) => problem,
                    Err(error) => Some(error.to_string()),
                };
                if let Some(problem) = problem {
                    report.failures.push(CrashFailure {
                        index,
                        site: site.clone(),
                        moment,
                        problem,
                    });
                }
            }
        }
        Ok(report)
    }

    async fn crash_run(
        &self,
        dir: &Path,
        index: usize,
        moment: CrashMoment,
        clean: &Out<I>,
        clean_runs: &HashMap<String, u32>,
    ) -> Result<Option<String>, KitError> {
        std::fs::create_dir_all(dir).map_err(|e| KitError::Child(e.to_string()))?;
        if let Some(reset) = &self.before_each_run {
            reset();
        }
        let exe = std::env::current_exe().map_err(|e| KitError::Child(e.to_string()))?;
        let spec = format!(
            "{}\t{}\t{index}\t{}",
            self.test,
            dir.display(),
            moment_name(moment)
        );
        let child = Command::new(&exe)
            .args([
                self.test.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, spec)
            .output()
            .map_err(|e| KitError::Child(format!("cannot run {}: {e}", exe.display())))?;
        if child.status.signal() != Some(libc::SIGKILL) {
            let stderr = String::from_utf8_lossy(&child.stderr);
            let tail: String = stderr
                .lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Ok(Some(format!(
                "the child was not killed at the site ({}); its stderr ends:\n{tail}",
                child.status
            )));
        }
        let mut before: HashMap<String, u32> = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(dir.join(BODIES)) {
            for label in text.lines() {
                *before.entry(label.to_string()).or_default() += 1;
            }
        }
        let after = Arc::new(Hooks::default());
        let kit = self.open(&dir.join("store"), Arc::clone(&after)).await?;
        resume_and_judge(
            kit,
            self.workflow,
            self.on_wait.as_ref(),
            (clean, clean_runs),
            &before,
            &after,
        )
        .await
    }

    /// A kit engine on the sled store at `path`.
    async fn open(&self, path: &Path, hooks: Arc<Hooks>) -> Result<TestEngine, KitError> {
        Ok(TestEngine::open_with((self.builder)().path(path), None, test_clock(), hooks).await?)
    }

    /// The child's part: run until the planned site, where the process
    /// kills itself. Returns only if it did not get there.
    async fn child(&self, spec: &str) -> Result<(), KitError> {
        let parts: Vec<&str> = spec.split('\t').collect();
        let [_, dir, index, moment] = parts[..] else {
            return Err(KitError::Child(format!("malformed {CHILD_ENV}: {spec:?}")));
        };
        let dir = PathBuf::from(dir);
        let site: usize = index
            .parse()
            .map_err(|_| KitError::Child(format!("malformed {CHILD_ENV}: {spec:?}")))?;
        let moment = match moment {
            "before" => CrashMoment::BeforeCheckpoint,
            _ => CrashMoment::AfterCheckpoint,
        };
        let bodies = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(BODIES))
            .map_err(|e| KitError::Child(e.to_string()))?;
        let bodies = Mutex::new(bodies);
        let hooks = Arc::new(Hooks::default());
        hooks.watch_bodies(Box::new(move |label| {
            let mut file = bodies.lock().unwrap_or_else(|e| e.into_inner());
            // One write per line: it reaches the file before any kill.
            let _ = file.write_all(format!("{label}\n").as_bytes());
        }));
        hooks.plan(CrashPlan {
            site,
            moment,
            crash: Arc::new(|| {
                // SAFETY: kill(2) on our own pid has no memory effects.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }),
        });
        let kit = self.open(&dir.join("store"), hooks).await?;
        let handle = kit
            .start(self.workflow, INSTANCE, self.input.clone())
            .await?;
        drive(
            &kit,
            INSTANCE,
            handle,
            self.on_wait.as_ref(),
            "the child run",
        )
        .await?;
        Ok(())
    }
}

fn moment_name(moment: CrashMoment) -> &'static str {
    match moment {
        CrashMoment::BeforeCheckpoint => "before",
        CrashMoment::AfterCheckpoint => "after",
    }
}
