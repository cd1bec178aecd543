//! Typed errors: one enum per family and the umbrella [`Error`].
//!
//! Errors are `Clone` (one outcome reaches every handle of an instance), so
//! an underlying error (an `std::io::Error`, a database error, a decoder's
//! error) is kept as a shared [`Cause`]: [`std::error::Error::source`] walks
//! the chain down to it, and it can be downcast.

use std::path::PathBuf;
use std::sync::Arc;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the store could not be read or written.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another engine in this process) holds the store.
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// The store's files are damaged or are not a store.
    Corrupt {
        /// The store's directory.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The store was written by a newer version of this library.
    FormatTooNew {
        /// The version found in the store.
        found: u32,
        /// The newest version this build understands.
        supported: u32,
    },
    /// The store was written by an older version of this library, in a
    /// format this build does not read. Nothing was changed: finish its
    /// instances with the older build, or start from a new store.
    FormatTooOld {
        /// The version found in the store.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// An I/O error while reading or writing the store.
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The underlying error's text.
        reason: String,
        /// The underlying error (an `std::io::Error`, a database error),
        /// when there is one; [`source`](std::error::Error::source)
        /// returns it.
        source: Option<Cause>,
    },
    /// A record in the store could not be decoded.
    Decode {
        /// Which record.
        what: String,
        /// The decoder's complaint.
        reason: String,
        /// The decoder's error, when there is one;
        /// [`source`](std::error::Error::source) returns it.
        source: Option<Cause>,
    },
    /// The store's committer has stopped (the engine was shut down).
    Closed,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Locked { path } => write!(
                f,
                "store {} is locked by another process; stop the other process or open a different path",
                path.display()
            ),
            StoreError::Corrupt { path, reason } => write!(
                f,
                "store {} is corrupt or unreadable: {reason}",
                path.display()
            ),
            StoreError::FormatTooNew { found, supported } => write!(
                f,
                "store format version {found} is newer than the {supported} this build reads; upgrade durable"
            ),
            StoreError::FormatTooOld { found, supported } => write!(
                f,
                "store format version {found} was written by an older durable; this build reads format version {supported} only and does not convert stores: finish its instances with the build that wrote it, or open a new store"
            ),
            StoreError::Io { op, reason, .. } => {
                write!(f, "store i/o failed during {op}: {reason}")
            }
            StoreError::Decode { what, reason, .. } => {
                write!(f, "record {what} in the store does not decode: {reason}")
            }
            StoreError::Closed => f.write_str("the engine is shut down"),
        }
    }
}

/// The source of an i/o or decoding failure is the underlying error itself
/// (an `std::io::Error`, a database error), so it downcasts directly.
impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io {
                source: Some(cause),
                ..
            }
            | StoreError::Decode {
                source: Some(cause),
                ..
            } => Some(cause.get_ref()),
            _ => None,
        }
    }
}

impl StoreError {
    /// An I/O failure during `op`, caused by `error` (kept as the source).
    ///
    /// ```
    /// use durable_runtime::StoreError;
    ///
    /// let e = StoreError::io("read", std::io::Error::other("disk gone"));
    /// let source = std::error::Error::source(&e).expect("a source");
    /// assert_eq!(source.to_string(), "disk gone");
    /// ```
    pub fn io(op: &'static str, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Io {
            op,
            reason: error.to_string(),
            source: Some(Cause::new(error)),
        }
    }

    /// An I/O failure during `op` that no underlying error describes.
    pub fn io_message(op: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Io {
            op,
            reason: reason.into(),
            source: None,
        }
    }

    /// Record `what` does not decode, as `error` says (kept as the source).
    pub(crate) fn decode(
        what: String,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Decode {
            what,
            reason: error.to_string(),
            source: Some(Cause::new(error)),
        }
    }
}

/// The underlying error of a failure, shared so that errors stay `Clone`.
/// It displays as that error, and [`get_ref`](Cause::get_ref) reaches it
/// for a downcast (so does the failure's
/// [`source`](std::error::Error::source)):
///
/// ```
/// use durable_runtime::StoreError;
///
/// let e = StoreError::io("read", std::io::Error::from(std::io::ErrorKind::NotFound));
/// if let StoreError::Io { source: Some(cause), .. } = &e {
///     let io = cause.get_ref().downcast_ref::<std::io::Error>().unwrap();
///     assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
/// }
/// ```
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(error))
    }

    /// The underlying error.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

/// Everything that can go wrong, by family. Match the family, then the
/// variant:
///
/// ```
/// use durable_runtime::{Error, InstanceError, UsageError};
///
/// fn explain(e: &Error) -> &'static str {
///     match e {
///         Error::Usage(UsageError::NotFound { .. }) => "no such instance",
///         Error::Usage(_) => "fix the call",
///         Error::Replay(_) => "the code no longer matches the stored history",
///         Error::Instance(InstanceError::Cancelled { .. }) => "cancelled",
///         Error::Instance(_) => "the instance stopped",
///         Error::Store(_) => "the store failed",
///         _ => "something else",
///     }
/// }
/// ```
///
/// Errors are `Clone`: one outcome reaches every handle of an instance.
/// `Display` shows the family's message as it is.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call was wrong; see [`UsageError`].
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// Stored history cannot be replayed by this code; see [`ReplayError`].
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// How an instance ended or why it stopped; see [`InstanceError`].
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// The store failed; instances are left resumable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The call was wrong: an invalid or conflicting id, an unknown instance or
/// workflow, an event of the wrong type, an instance that has finished.
/// Fix the call; nothing was changed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// An instance id was empty or too long.
    #[error("invalid instance id {id:?}: {reason}")]
    InvalidId {
        /// The id, truncated for display.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The id already names an instance of another workflow or with another input.
    #[error(
        "instance {id:?} already exists with {existing}; an id names one instance, use a new id"
    )]
    IdConflict {
        /// The instance id.
        id: String,
        /// What differs: the other workflow's name, or "a different input".
        existing: String,
    },
    /// [`Engine::fork`](crate::Engine::fork) was asked to fork from a step
    /// the instance has not recorded.
    #[error("instance {instance:?} has recorded no step {step:?} to fork from")]
    NoSuchStep {
        /// The instance id.
        instance: String,
        /// The step's name.
        step: String,
    },
    /// No instance has this id.
    #[error("no instance {id:?}")]
    NotFound {
        /// The instance id.
        id: String,
    },
    /// The workflow was not registered with this engine.
    #[error(
        "workflow {workflow:?} is not registered with this engine; add `.register({workflow})` to the builder"
    )]
    NotRegistered {
        /// The workflow's name.
        workflow: String,
    },
    /// Two different workflow definitions were registered under one name.
    #[error(
        "two different workflows are registered under the name {workflow:?}; give one a `#[durable(name = \"...\")]`"
    )]
    DuplicateWorkflow {
        /// The clashing name.
        workflow: String,
    },
    /// The last wait for event `event` timed out and nothing waits for it
    /// now: the event was not stored (it would never be read). Send it again
    /// once the instance waits for `event` again, if it will.
    #[error(
        "instance {instance:?} no longer waits for event {event:?}: its wait (occurrence {occurrence}) timed out; the event was not stored"
    )]
    WaitTimedOut {
        /// The instance id.
        instance: String,
        /// The event's name.
        event: String,
        /// The occurrence of the wait that timed out.
        occurrence: u32,
    },
    /// `Engine::retry` takes a failed, blocked or set-aside instance, or one
    /// that completed with an error; this one is not.
    #[error(
        "instance {instance:?} is {status}: only a failed, blocked or needs-attention instance, or one that completed with an error, can be retried"
    )]
    NotRetryable {
        /// The instance id.
        instance: String,
        /// Its status.
        status: &'static str,
    },
    /// The store this engine runs on cannot do this operation yet.
    #[error("{operation} is not supported on the {backend} store yet")]
    NotSupported {
        /// The operation asked for.
        operation: &'static str,
        /// The kind of store.
        backend: &'static str,
    },
    /// The instance has finished, so it takes no more events or cancellation.
    #[error("instance {instance:?} has already finished ({status})")]
    InstanceFinished {
        /// The instance id.
        instance: String,
        /// How it finished: "completed", "failed" or "cancelled".
        status: &'static str,
    },
    /// An event's payload shape is not the one the workflow's wait of that
    /// name reads (checked whether or not the instance waits yet).
    #[error(
        "instance {instance:?}: event {event:?} takes a payload shaped `{expected}`, not `{got}`; nothing was delivered"
    )]
    EventTypeMismatch {
        /// The instance id.
        instance: String,
        /// The event's name.
        event: String,
        /// The payload type the wait expects.
        expected: String,
        /// The payload type that was sent.
        got: String,
    },
    /// A PostgreSQL schema name that is not a plain identifier.
    #[error("invalid schema name {schema:?}: {reason}")]
    InvalidSchema {
        /// The name, truncated for display.
        schema: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `open()` was called outside a tokio runtime.
    #[error("the engine must be opened inside a tokio runtime")]
    NoRuntime,
    /// A value given as JSON does not fit the type the workflow reads
    /// (feature `json`), or its type is unknown; nothing was stored.
    #[error("{what}: {reason}")]
    InvalidJson {
        /// What the value was for: `event "approval"`.
        what: String,
        /// Why it does not fit, with where in the value.
        reason: String,
    },
    /// Published state (`Ctx::set_event`) or a stream value
    /// (`Ctx::write_stream`) read as another type than the one it was
    /// written as; nothing was decoded.
    #[error(
        "instance {instance:?}: published key {key:?} holds a value shaped `{stored}`, not `{asked}`"
    )]
    PublishedTypeMismatch {
        /// The instance id.
        instance: String,
        /// The published key.
        key: String,
        /// The shape of the type the value was written as.
        stored: String,
        /// The shape of the type asked for.
        asked: String,
    },
    /// A schedule's cron expression does not parse.
    #[error("invalid cron expression {expression:?}: {error}")]
    InvalidCron {
        /// The expression, truncated for display.
        expression: String,
        /// What is wrong with it.
        error: crate::cron::CronError,
    },
    /// No schedule has this name.
    #[error("no schedule {name:?}")]
    NoSuchSchedule {
        /// The schedule's name.
        name: String,
    },
    /// A queue was declared wrongly (`EngineBuilder::queue`): an empty or
    /// too long name, a name declared twice, or a limit of zero.
    #[error("invalid queue {queue:?}: {reason}")]
    InvalidQueue {
        /// The queue's name.
        queue: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `Engine::enqueue` named a queue the engine was not built with.
    #[error("no queue named {queue:?} was declared on this engine")]
    UnknownQueue {
        /// The queue's name.
        queue: String,
    },
    /// An instance with the same deduplication id is still pending in the
    /// queue (enqueued and not finished); nothing was enqueued.
    #[error("queue {queue:?} already holds instance {existing:?} with deduplication id {dedup:?}")]
    Duplicate {
        /// The queue's name.
        queue: String,
        /// The deduplication id.
        dedup: String,
        /// The pending instance that holds it.
        existing: String,
    },
}

/// Stored history cannot be replayed by this code: a value that no longer
/// decodes, a value too large, a replay that diverged. The instance is
/// blocked, nothing stored is rewritten, and the code that wrote it can still
/// finish it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// instance with the old build) and it resumes; nothing stored is changed.
    #[error(
        "instance {instance:?} is blocked: the checkpoint of step {step:?} (occurrence {occurrence}) was stored as `{stored_type}` and does not decode as `{expected_type}`: {reason}"
    )]
    CheckpointDecode {
        /// The instance id.
        instance: String,
        /// The step's name.
        step: String,
        /// Which occurrence of the step.
        occurrence: u32,
        /// The type the checkpoint was written as.
        stored_type: String,
        /// The type the code now expects.
        expected_type: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// A stored input or output no longer decodes into the workflow's type.
    #[error(
        "instance {instance:?} is blocked: its stored {what} does not decode as `{expected_type}`: {reason}"
    )]
    ValueDecode {
        /// The instance id.
        instance: String,
        /// "input" or "output".
        what: &'static str,
        /// The type the code expects.
        expected_type: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("instance {instance:?}: {what} does not encode: {reason}")]
    Encode {
        /// The instance id.
        instance: String,
        /// What was being encoded.
        what: String,
        /// The encoder's complaint.
        reason: String,
    },
    /// A step value, input or output is larger than the configured limit.
    /// A step's outcome over it is recorded as the step's failure (its body
    /// never runs again) and the instance fails.
    #[error(
        "instance {instance:?}: {what} is {size} bytes, over the {limit}-byte limit; raise `max_value_size` or store the data elsewhere and checkpoint a reference"
    )]
    ValueTooLarge {
        /// The instance id.
        instance: String,
        /// What was too large: "step \"x\" (occurrence n)", "input" or "output".
        what: String,
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// not deterministic, or the workflow changed while instances were running.
    #[error("instance {instance:?} is blocked: replay diverged from its history: {detail}")]
    Nondeterminism {
        /// The instance id.
        instance: String,
        /// What diverged.
        detail: String,
    },
    /// expects. The instance is blocked; nothing is rewritten.
    #[error(
        "instance {instance:?} is blocked: event {event:?} (number {occurrence}) was sent as `{stored_type}` and does not decode as `{expected_type}`: {reason}"
    )]
    EventDecode {
        /// The instance id.
        instance: String,
        /// The event's name.
        event: String,
        /// Which event of that name (0 for the first).
        occurrence: u32,
        /// The type it was sent as.
        stored_type: String,
        /// The type the wait expects.
        expected_type: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The instance's recorded history does not fit the registered code of
    /// its workflow (a recorded site is gone or changed kind or type, or a
    /// new site comes before one it already reached). Nothing ran: it is
    /// set aside as [`Status::Incompatible`](crate::Status::Incompatible),
    /// untouched, and the build that started it can still finish it.
    #[error(
        "instance {instance:?} of workflow {workflow:?} cannot run on this code, nothing ran: {reason}; finish it with the build that started it, or register that version side by side"
    )]
    Incompatible {
        /// The instance id.
        instance: String,
        /// The workflow's name.
        workflow: String,
        /// What changed, site by site.
        reason: String,
    },
}

/// How an instance ended or why it stopped: a panic, cancellation,
/// a crash loop set aside, an earlier recorded failure, a shutdown.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// A step's body panicked on its last attempt. The instance is failed.
    #[error(
        "instance {instance:?} failed: step {step:?} (occurrence {occurrence}) panicked: {message}"
    )]
    StepPanicked {
        /// The instance id.
        instance: String,
        /// The step's name.
        step: String,
        /// Which occurrence of the step.
        occurrence: u32,
        /// The panic message.
        message: String,
    },
    /// A step's last attempt ran past the step's timeout (`step!(name,
    /// timeout = d, ..)`). The instance is failed.
    #[error(
        "instance {instance:?} failed: step {step:?} (occurrence {occurrence}) timed out after {timeout_ms} ms on its last attempt"
    )]
    StepTimedOut {
        /// The instance id.
        instance: String,
        /// The step's name.
        step: String,
        /// Which occurrence of the step.
        occurrence: u32,
        /// The step's timeout in milliseconds.
        timeout_ms: u64,
    },
    /// code is fixed; it resumes when the engine next opens.
    #[error("instance {instance:?} is blocked: the workflow panicked outside a step: {message}")]
    WorkflowPanicked {
        /// The instance id.
        instance: String,
        /// The panic message.
        message: String,
    },
    /// step and is set aside; see [`Engine::resume`](crate::Engine::resume).
    #[error("instance {instance:?} needs attention: {reason}")]
    NeedsAttention {
        /// The instance id.
        instance: String,
        /// Why it was set aside.
        reason: String,
    },
    /// The instance's deadline ([`StartOptions::deadline`](crate::StartOptions::deadline))
    /// passed before it finished: it was cancelled (its status is
    /// [`Status::Cancelled`](crate::Status::Cancelled), its history says why).
    #[error("instance {instance:?} was cancelled: its deadline passed")]
    DeadlinePassed {
        /// The instance id.
        instance: String,
        /// The deadline, in milliseconds since the Unix epoch.
        deadline_ms: u64,
    },
    /// The instance was cancelled with [`Engine::cancel`](crate::Engine::cancel).
    #[error("instance {instance:?} was cancelled")]
    Cancelled {
        /// The instance id.
        instance: String,
    },
    /// is retried when the engine next opens.
    #[error("instance {instance:?} is blocked: {reason}")]
    Blocked {
        /// The instance id.
        instance: String,
        /// The recorded error.
        reason: String,
    },
    /// The instance failed earlier; its recorded error.
    #[error("instance {instance:?} failed: {reason}")]
    Failed {
        /// The instance id.
        instance: String,
        /// The recorded error.
        reason: String,
    },
    /// The engine was shut down before the instance finished; it resumes at the next open.
    #[error(
        "the engine was shut down before instance {instance:?} finished; it resumes when the store is opened again"
    )]
    ShutDown {
        /// The instance id.
        instance: String,
    },
    /// This process no longer owns the instance: another worker took it
    /// over (this one was stopped or cut off past its lease) or it was
    /// cancelled. The write was refused and nothing more of the instance
    /// runs here; its current owner carries on from its checkpoints.
    #[error(
        "instance {instance:?}: this process no longer owns it (claimed with epoch {epoch}); the write was refused"
    )]
    LeaseLost {
        /// The instance id.
        instance: String,
        /// The epoch this process had claimed it with.
        epoch: u64,
    },
    /// A compensation (`step!(.., compensate = ..)`) failed for good while
    /// the instance was being compensated: the chain stopped there (the
    /// compensations of earlier steps did not run) and the instance failed.
    #[error(
        "instance {instance:?} failed: the compensation of step {step:?} ({at}) failed: {error} (compensating because: {cause})"
    )]
    CompensationFailed {
        /// The instance id.
        instance: String,
        /// The step whose compensation failed.
        step: String,
        /// Which occurrence (or key) of the step.
        at: String,
        /// The compensation's error, as `Debug` shows it.
        error: String,
        /// Why the instance was being compensated (its failure, or a cancel).
        cause: Box<str>,
    },
    /// A keyed step used one key twice in one instance. The instance fails.
    #[error(
        "instance {instance:?}: step {step:?} was called twice with key {key}; a key names one step of an instance"
    )]
    DuplicateKey {
        /// The instance id.
        instance: String,
        /// The step's name.
        step: String,
        /// The key, as `Debug` shows it.
        key: String,
    },
}

impl Error {
    /// Whether the instance that met this error stays resumable (blocked) rather than failed.
    pub(crate) fn blocks(&self) -> bool {
        !matches!(
            self,
            Error::Instance(
                InstanceError::StepPanicked { .. }
                    | InstanceError::StepTimedOut { .. }
                    | InstanceError::Failed { .. }
                    | InstanceError::Cancelled { .. }
                    | InstanceError::DeadlinePassed { .. }
                    | InstanceError::DuplicateKey { .. }
                    | InstanceError::CompensationFailed { .. }
            ) | Error::Replay(ReplayError::ValueTooLarge { .. })
        )
    }
}
