//! Crash at every step, in process: [`CrashTest`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{KitError, TestEngine, test_clock};
use crate::engine::{Engine, EngineBuilder, Handle};
use crate::hooks::{CrashMoment, CrashPlan, Hooks};
use crate::inspect::Status;
use crate::store::MemoryStore;
use crate::workflow::{IntoWorkflow, Workflow};

type In<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Input;
type Out<I> = <<I as IntoWorkflow>::Workflow as Workflow>::Output;

/// The id of the instance a crash test runs.
pub(crate) const INSTANCE: &str = "crash-test";

type Send_ =
    Box<dyn FnOnce(Engine, String, String) -> Pin<Box<dyn Future<Output = crate::Result<()>>>>>;

/// An event a test sends to an instance that waits for it (see
/// [`CrashTest::on_wait`]).
pub struct Event {
    send: Send_,
}

impl Event {
    /// The event with `payload` (of the type the workflow's `wait_for!`
    /// reads).
    pub fn new<P>(payload: P) -> Event
    where
        P: Serialize + DeserializeOwned + Send + 'static,
    {
        Event {
            send: Box::new(move |engine, id, name| {
                Box::pin(async move { engine.send_event(id, name, payload).await })
            }),
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event").finish_non_exhaustive()
    }
}

/// What a test answers when an instance waits for an event: the event to
/// send, or `None` to let the wait time out.
pub(crate) type OnWait = Arc<dyn Fn(&str) -> Option<Event> + Send + Sync>;

/// How a driven run ended.
pub(crate) enum Driven<O> {
    /// The instance finished (its handle's result).
    Finished(crate::Result<O>),
    /// The planned crash happened.
    Crashed,
}

/// Runs instance `id` on `kit` as far as it goes: until it finishes or the
/// planned crash happens, moving the manual clock to each deadline it waits
/// for and asking `on_wait` for the events it waits for.
pub(crate) async fn drive<O: DeserializeOwned>(
    kit: &TestEngine,
    id: &str,
    handle: Handle<O>,
    on_wait: Option<&OnWait>,
    run: &str,
) -> Result<Driven<O>, KitError> {
    const ROUNDS: usize = 100_000;
    for _ in 0..ROUNDS {
        kit.run_until_idle().await;
        if kit.hooks.stopped() {
            return Ok(Driven::Crashed);
        }
        let status = kit.status(id).await?;
        match &status {
            Status::Running { .. } | Status::Sleeping { .. } => {}
            Status::Waiting { event, .. } => {
                if let Some(answer) = on_wait.and_then(|f| f(event)) {
                    (answer.send)(kit.engine.clone(), id.to_string(), event.clone()).await?;
                    continue;
                }
            }
            _ => return Ok(Driven::Finished(handle.result().await)),
        }
        let now = kit.clock.now();
        match kit.engine.next_wake_ms() {
            Some(at) => kit.clock.set(now.max(crate::time::from_ms(at))),
            None => {
                return Err(KitError::Stuck {
                    run: run.to_string(),
                    reason: format!(
                        "instance {id:?} is {status:?} with no deadline to move the clock to \
                         (answer its waits with `on_wait`)"
                    ),
                });
            }
        }
    }
    Err(KitError::Stuck {
        run: run.to_string(),
        reason: format!("instance {id:?} did not finish in {ROUNDS} rounds of the clock"),
    })
}

/// Makes a fresh engine builder for each run.
pub(crate) type MakeBuilder = Arc<dyn Fn() -> EngineBuilder + Send + Sync>;

/// Crash at every step: runs a workflow once cleanly, then once per step
/// site and [`CrashMoment`], each time from scratch, with the engine
/// crashing at that site (as a killed process: nothing more is written, its
/// tasks are dropped) and a new engine opened on what the store held then;
/// the resumed instance must end with the same output, and each step body
/// must have run at most once more than in the clean run.
///
/// Start it with [`TestEngine::crash_at_every_step`]. A site is one step
/// occurrence (each turn of a loop, each key of a keyed step) that reaches
/// its final checkpoint, in the order they do.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use durable_runtime::{BoxFuture, Ctx, IntoWorkflow, Workflow};
/// use durable_runtime::manifest::{SiteDecl, SiteKind};
/// use durable_runtime::testing::{CrashMoment, TestEngine};
///
/// /// Adds one in a step, three times (written by hand here; `#[durable]`
/// /// writes this for an `async fn`).
/// #[derive(Clone, Copy)]
/// struct Count;
/// impl Workflow for Count {
///     type Input = u32;
///     type Output = u32;
///     const NAME: &'static str = "count";
///     const SITES: &'static [SiteDecl] =
///         &[SiteDecl { name: "add", kind: SiteKind::Step, guard: None }];
///     fn run<'a>(self, ctx: &'a Ctx, mut n: u32) -> BoxFuture<'a, u32> {
///         Box::pin(async move {
///             for _ in 0..3 {
///                 n = ctx.step("add", || async move { Ok::<_, String>(n + 1) }).await.unwrap();
///             }
///             n
///         })
///     }
/// }
/// impl IntoWorkflow for Count {
///     type Workflow = Self;
///     fn into_workflow(self) -> Self { self }
/// }
///
/// let report = TestEngine::crash_at_every_step(Count, 10).run().await.unwrap();
/// assert_eq!(report.output, "13");
/// assert_eq!(report.sites, ["add#0", "add#1", "add#2"]);
/// assert_eq!(report.runs, 1 + 3 * 2);
/// report.assert_ok();
/// # }
/// ```
pub struct CrashTest<I: IntoWorkflow> {
    workflow: I,
    input: In<I>,
    builder: MakeBuilder,
    on_wait: Option<OnWait>,
    before_each_run: Option<Arc<dyn Fn() + Send + Sync>>,
    moments: Vec<CrashMoment>,
}

impl<I: IntoWorkflow> fmt::Debug for CrashTest<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashTest")
            .field("workflow", &<I::Workflow as Workflow>::NAME)
            .field("moments", &self.moments)
            .finish_non_exhaustive()
    }
}

impl TestEngine {
    /// A [`CrashTest`] of `workflow` with `input`; [`run`](CrashTest::run)
    /// runs it.
    pub fn crash_at_every_step<I: IntoWorkflow>(workflow: I, input: In<I>) -> CrashTest<I> {
        CrashTest {
            workflow,
            input,
            builder: Arc::new(move || Engine::builder().register(workflow)),
            on_wait: None,
            before_each_run: None,
            moments: vec![CrashMoment::BeforeCheckpoint, CrashMoment::AfterCheckpoint],
        }
    }
}

impl<I> CrashTest<I>
where
    I: IntoWorkflow,
    In<I>: Clone,
    Out<I>: PartialEq + fmt::Debug,
{
    /// Builds each run's engine with `make` (default: a builder with only
    /// the workflow registered); for a retry policy or other workflows. The
    /// kit sets the store and the clock.
    pub fn engine(mut self, make: impl Fn() -> EngineBuilder + Send + Sync + 'static) -> Self {
        self.builder = Arc::new(make);
        self
    }

    /// When the instance waits for event `name`, `answer(name)` gives the
    /// event to send, or `None` to let the wait time out (the clock moves
    /// to its timeout). Without it, a wait with no timeout fails the test
    /// as stuck. It is asked again for the same wait in a run resumed after
    /// a crash, so it should answer from the name alone.
    pub fn on_wait(
        mut self,
        answer: impl Fn(&str) -> Option<Event> + Send + Sync + 'static,
    ) -> Self {
        self.on_wait = Some(Arc::new(answer));
        self
    }

    /// Calls `reset` before each run (the clean one and each crash run):
    /// to put back state outside the workflow that its steps change.
    pub fn before_each_run(mut self, reset: impl Fn() + Send + Sync + 'static) -> Self {
        self.before_each_run = Some(Arc::new(reset));
        self
    }

    /// Crashes only at `moment` (default: both).
    pub fn only(mut self, moment: CrashMoment) -> Self {
        self.moments = vec![moment];
        self
    }

    /// Runs the clean run, then every crash run; the report lists every
    /// failure (it does not stop at the first). `Err` when the clean run
    /// itself does not finish with an output.
    pub async fn run(self) -> Result<CrashReport, KitError> {
        if let Some(reset) = &self.before_each_run {
            reset();
        }
        let hooks = Arc::new(Hooks::default());
        let kit = TestEngine::open_with(
            (self.builder)(),
            Some(Arc::new(MemoryStore::new())),
            test_clock(),
            Arc::clone(&hooks),
        )
        .await?;
        let handle = kit
            .start(self.workflow, INSTANCE, self.input.clone())
            .await?;
        let clean = match drive(
            &kit,
            INSTANCE,
            handle,
            self.on_wait.as_ref(),
            "the clean run",
        )
        .await?
        {
            Driven::Finished(output) => output?,
            Driven::Crashed => unreachable!("no crash is planned in the clean run"),
        };
        kit.shutdown().await;
        let sites = hooks.sites();
        let clean_runs = hooks.site_runs();
        let mut report = CrashReport {
            output: format!("{clean:?}"),
            sites: sites.clone(),
            runs: 1,
            failures: Vec::new(),
        };
        for (index, site) in sites.iter().enumerate() {
            for &moment in &self.moments {
                report.runs += 1;
                let fail = |problem: String| CrashFailure {
                    index,
                    site: site.clone(),
                    moment,
                    problem,
                };
                match self.crash_run(index, moment, &clean, &clean_runs).await {
                    Ok(None) => {}
                    Ok(Some(problem)) => report.failures.push(fail(problem)),
                    Err(error) => report.failures.push(fail(error.to_string())),
                }
            }
        }
        Ok(report)
    }

    /// One crash run: `None` when it ends as the clean run did.
    async fn crash_run(
        &self,
        index: usize,
        moment: CrashMoment,
        clean: &Out<I>,
        clean_runs: &HashMap<String, u32>,
    ) -> Result<Option<String>, KitError> {
        if let Some(reset) = &self.before_each_run {
            reset();
        }
        let clock = test_clock();
        let store = Arc::new(MemoryStore::new());
        let survived: Arc<Mutex<Option<MemoryStore>>> = Arc::default();
        let hooks = Arc::new(Hooks::default());
        hooks.plan(CrashPlan {
            site: index,
            moment,
            crash: {
                let (store, survived) = (Arc::clone(&store), Arc::clone(&survived));
                Arc::new(move || {
                    *survived.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.snapshot());
                })
            },
        });
        let kit = TestEngine::open_with(
            (self.builder)(),
            Some(store),
            clock.clone(),
            Arc::clone(&hooks),
        )
        .await?;
        let handle = kit
            .start(self.workflow, INSTANCE, self.input.clone())
            .await?;
        let driven = drive(
            &kit,
            INSTANCE,
            handle,
            self.on_wait.as_ref(),
            "the crash run",
        )
        .await?;
        // The crashed engine's tasks are dropped; what it writes from now on
        // goes to a store nobody opens again.
        kit.shutdown().await;
        if let Driven::Finished(output) = driven {
            return Ok(Some(format!(
                "the run never reached the site (it ended with {output:?}): \
                 the workflow does not take the same path on every run"
            )));
        }
        let survived = survived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let after = Arc::new(Hooks::default());
        let kit = TestEngine::open_with(
            (self.builder)(),
            Some(Arc::new(survived)),
            clock,
            Arc::clone(&after),
        )
        .await?;
        let before = hooks.site_runs();
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
}

/// Resumes the crashed instance on `kit` (whose hooks are `after`), drives
/// it to its end and [`judge`]s the run against the clean one (`clean`:
/// its output and body runs), with `before` the body runs before the crash.
pub(crate) async fn resume_and_judge<I: IntoWorkflow>(
    kit: TestEngine,
    workflow: I,
    on_wait: Option<&OnWait>,
    clean: (&Out<I>, &HashMap<String, u32>),
    before: &HashMap<String, u32>,
    after: &Hooks,
) -> Result<Option<String>, KitError>
where
    Out<I>: PartialEq + fmt::Debug,
{
    let handle = kit.attach(workflow, INSTANCE).await?;
    let driven = drive(&kit, INSTANCE, handle, on_wait, "the resumed run").await;
    kit.shutdown().await;
    let output = match driven? {
        Driven::Finished(output) => output,
        Driven::Crashed => unreachable!("no crash is planned in the resumed run"),
    };
    Ok(judge(output, clean.0, before, &after.site_runs(), clean.1))
}

/// Compares a resumed run with the clean run: `None` when its output is the
/// same and no body ran more than once more (counting its runs before and
/// after the crash); else what differs.
pub(crate) fn judge<O: PartialEq + fmt::Debug>(
    output: crate::Result<O>,
    clean: &O,
    before: &HashMap<String, u32>,
    after: &HashMap<String, u32>,
    clean_runs: &HashMap<String, u32>,
) -> Option<String> {
    let mut problems = Vec::new();
    match output {
        Ok(output) if output == *clean => {}
        Ok(output) => problems.push(format!(
            "the output differs: {output:?} after the crash, {clean:?} in the clean run"
        )),
        Err(error) => problems.push(format!("the resumed instance failed: {error}")),
    }
    let mut runs: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for (label, n) in before {
        runs.entry(label).or_default().0 += n;
    }
    for (label, n) in after {
        runs.entry(label).or_default().1 += n;
    }
    for (label, (before, after)) in runs {
        let clean = clean_runs.get(label).copied().unwrap_or(0);
        if before + after > clean + 1 {
            problems.push(format!(
                "the body of {label} ran {} times ({before} before the crash, {after} after), \
                 {clean} in the clean run",
                before + after
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// What [`CrashTest::run`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashReport {
    /// The clean run's output, as `{:?}` prints it.
    pub output: String,
    /// The step sites of the clean run, in order: `name#occurrence`, or
    /// `name[key]` for a keyed step.
    pub sites: Vec<String>,
    /// How many runs were made: the clean run and one per site and moment.
    pub runs: usize,
    /// Every crash run that did not end as the clean run did.
    pub failures: Vec<CrashFailure>,
}

/// One crash run that did not end as the clean run did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashFailure {
    /// The site's index in [`CrashReport::sites`].
    pub index: usize,
    /// The site's label.
    pub site: String,
    /// Where around the site's checkpoint the crash was.
    pub moment: CrashMoment,
    /// What differed.
    pub problem: String,
}

impl fmt::Display for CrashFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash at site {} ({}), {}: {}",
            self.index, self.site, self.moment, self.problem
        )
    }
}

impl CrashReport {
    /// Whether every crash run ended as the clean run did.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Panics, listing every failure, unless [`is_ok`](Self::is_ok).
    #[track_caller]
    pub fn assert_ok(&self) {
        if !self.is_ok() {
            panic!("{self}");
        }
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs over {} step sites ({}); ",
            self.runs,
            self.sites.len(),
            self.sites.join(", ")
        )?;
        if self.failures.is_empty() {
            return f.write_str("every crash run ended as the clean run did");
        }
        writeln!(f, "{} failed:", self.failures.len())?;
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        Ok(())
    }
}
