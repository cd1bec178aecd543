//! Test support for `durable`: a file system that loses what was not synced
//! when the power is cut, to prove the store survives power loss.
//!
//! [`PowerFs`] is a FUSE file system (Linux only, on the `fuser` crate; it
//! mounts with the `mount` system call, so it needs `/dev/fuse` and root,
//! or `fusermount3`) kept in the memory of the test process. It holds, for
//! every file and directory, the durable state and the operations not yet
//! synced; the [`model`] module says exactly what a cut keeps of them. A
//! test mounts it, runs a worker process on it, and at a moment of its
//! choosing [`freeze`](PowerFs::freeze)s it (the instant of the cut: every
//! request waits), SIGKILLs the worker, [`power_off`](PowerFs::power_off)s
//! (the waiting requests fail, so the worker can die), unmounts, and
//! [`cut`](PowerFs::cut)s: the unsynced operations are dropped (or a subset
//! kept, a write torn), and the next mount serves the durable state.
//! [`Trigger`]s aim the cut (or an EIO) at the N-th operation of a kind on
//! a path pattern: the N-th fsync of `db`, the first rename of `snap.*`.
#![cfg(target_os = "linux")]

mod fs;
pub mod model;

pub use fs::{Action, Counts, Fired, Mount, OpKind, PowerFs, Trigger, probe};
pub use model::{CutMode, CutReport};
