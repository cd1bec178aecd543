//! The FUSE side: serves a [`Model`] at a mount point, counts operations,
//! fires [`Trigger`]s, and parks every request while frozen.
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    WriteFlags,
};

use crate::model::{CutMode, CutReport, Ino, Model, Rng, TornWrite};

/// How long the kernel may cache names and attributes. Every change goes
/// through the kernel, and a cut happens with nothing mounted.
const TTL: Duration = Duration::from_secs(1);

/// A kind of operation a [`Trigger`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// `write`/`pwrite` to a file.
    Write,
    /// `ftruncate`/`set_len`.
    SetLen,
    /// Creation of a file or directory.
    Create,
    /// `unlink` or `rmdir`.
    Unlink,
    /// `rename` (matches the old or the new path).
    Rename,
    /// `fsync`/`fdatasync` of a file.
    Fsync,
    /// `fsync` of a directory.
    FsyncDir,
}

/// What happens when a [`Trigger`] fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// The operation does not happen; the file system freezes (every
    /// request waits) until the power is cut.
    CutBefore,
    /// The operation happens and returns; then the file system freezes.
    CutAfter,
    /// A write that only partly reaches the disk: the file system freezes
    /// before it returns; the cut keeps the file's earlier unsynced writes
    /// and a strict prefix of this one (other kinds: as `CutBefore`).
    Tear,
    /// The operation fails with EIO and does not happen; a failed `fsync`
    /// also loses the file's unsynced writes for good. The file system goes
    /// on.
    Fail,
}

/// Fires `action` at the `nth` (1-based) operation of `kind` on a path
/// matching `pattern` (relative to the mount point; `*` matches anything,
/// once: `"snap.*"`, `"blobs/*"`, `"db"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// The kind of operation.
    pub kind: OpKind,
    /// The path pattern.
    pub pattern: String,
    /// Which matching operation.
    pub nth: u32,
    /// What to do then.
    pub action: Action,
}

/// A trigger that fired.
#[derive(Clone, Debug)]
pub struct Fired {
    /// The trigger.
    pub trigger: Trigger,
    /// The path it fired on.
    pub path: String,
    /// When.
    pub at: Instant,
}

fn matches(pattern: &str, path: &str) -> bool {
    match pattern.split_once('*') {
        Some((pre, post)) => {
            path.len() >= pre.len() + post.len() && path.starts_with(pre) && path.ends_with(post)
        }
        None => pattern == path,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Serving requests.
    Live,
    /// Parking every request: the power is about to go.
    Frozen,
    /// Failing every request with EIO: the power went; waiting for the
    /// processes to die and the cut.
    Dead,
}

/// Counts of the operations served, by kind.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Writes.
    pub writes: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Truncations.
    pub set_lens: u64,
    /// Files and directories created.
    pub creates: u64,
    /// Unlinks and rmdirs.
    pub unlinks: u64,
    /// Renames.
    pub renames: u64,
    /// File fsyncs.
    pub fsyncs: u64,
    /// Directory fsyncs.
    pub dir_fsyncs: u64,
}

struct Shared {
    model: Model,
    phase: Phase,
    /// Replies held while frozen; dropping one answers EIO.
    parked: Vec<Box<dyn Send>>,
    triggers: Vec<(Trigger, u32)>,
    fired: Vec<Fired>,
    torn: Option<TornWrite>,
    counts: Counts,
    /// Every operation served, when logging.
    log: Option<Vec<String>>,
}

struct Inner {
    shared: Mutex<Shared>,
    changed: Condvar,
}

/// A file system that loses what was not synced when told to cut the
/// power. Clones share the state; mount it with [`PowerFs::mount`].
#[derive(Clone)]
pub struct PowerFs {
    inner: Arc<Inner>,
}

impl Default for PowerFs {
    fn default() -> Self {
        PowerFs::new()
    }
}

impl std::fmt::Debug for PowerFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("PowerFs")
            .field("phase", &s.phase)
            .field("pending", &s.model.pending())
            .finish()
    }
}

/// A mounted [`PowerFs`]; unmounted by [`Mount::unmount`] or when dropped.
pub struct Mount {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount").field("path", &self.path).finish()
    }
}

impl Mount {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts, retrying while the mount is busy (a dying process may
    /// still hold files for a moment).
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let c_path = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // SAFETY: a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(c_path.as_ptr(), 0) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Some(libc::EINVAL) => break, // not mounted any more
                _ => {
                    // SAFETY: as above.
                    unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
                    break;
                }
            }
        }
        // The session thread ends when the kernel closes the channel: with
        // ENODEV (which fuser takes as a clean end) or, when the kernel
        // aborted the connection while tearing it down, ECONNABORTED; both
        // mean the file system is gone.
        match session.join() {
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.unmount_inner();
    }
}

/// Whether this machine can mount a FUSE file system here: `Err` says why
/// not (no `/dev/fuse`, no permission to mount, ...).
pub fn probe(dir: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
    let point = dir.join("probe");
    std::fs::create_dir_all(&point).map_err(|e| format!("cannot create {point:?}: {e}"))?;
    let fs = PowerFs::new();
    let mount = fs
        .mount(&point)
        .map_err(|e| format!("cannot mount a FUSE file system on {point:?}: {e}"))?;
    let file = point.join("probe");
    let check = std::fs::write(&file, b"probe")
        .and_then(|()| std::fs::File::open(&file)?.sync_all())
        .and_then(|()| std::fs::read(&file));
    let unmounted = mount.unmount();
    match check {
        Ok(data) if data == b"probe" => {}
        Ok(data) => return Err(format!("the probe file read back {data:?}")),
        Err(e) => return Err(format!("the mounted file system does not work: {e}")),
    }
    unmounted.map_err(|e| format!("cannot unmount {point:?}: {e}"))
}

impl PowerFs {
    /// An empty file system (the root directory only).
    pub fn new() -> PowerFs {
        PowerFs {
            inner: Arc::new(Inner {
                shared: Mutex::new(Shared {
                    model: Model::new(),
                    phase: Phase::Live,
                    parked: Vec::new(),
                    triggers: Vec::new(),
                    fired: Vec::new(),
                    torn: None,
                    counts: Counts::default(),
                    log: None,
                }),
                changed: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mounts this file system at `at` (an existing directory), served by a
    /// thread of this process.
    pub fn mount(&self, at: &Path) -> io::Result<Mount> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::Subtype("powercut".into()),
        ];
        config.n_threads = Some(1);
        let path = at.canonicalize()?;
        let session = fuser::spawn_mount(self.clone(), &path, &config)?;
        Ok(Mount {
            session: Some(session),
            path,
        })
    }

    /// Arms `trigger` (counting matching operations from now on).
    pub fn arm(&self, trigger: Trigger) {
        self.lock().triggers.push((trigger, 0));
    }

    /// Disarms every trigger.
    pub fn disarm(&self) {
        self.lock().triggers.clear();
    }

    /// The triggers that fired since the last cut.
    pub fn fired(&self) -> Vec<Fired> {
        self.lock().fired.clone()
    }

    /// Waits up to `timeout` for a trigger to fire or the file system to
    /// freeze; true if one did.
    pub fn wait_fired(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if !s.fired.is_empty() || s.phase != Phase::Live {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .inner
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the file system is frozen (a trigger cut the power).
    pub fn frozen(&self) -> bool {
        self.lock().phase != Phase::Live
    }

    /// Stops serving: every request from now on waits. The moment of the
    /// power cut.
    pub fn freeze(&self) {
        let mut s = self.lock();
        if s.phase == Phase::Live {
            s.phase = Phase::Frozen;
        }
        self.inner.changed.notify_all();
    }

    /// Answers every waiting request, and every later one, with EIO: call
    /// once the processes using the file system are SIGKILLed, so that they
    /// can die.
    pub fn power_off(&self) {
        let parked = {
            let mut s = self.lock();
            s.phase = Phase::Dead;
            std::mem::take(&mut s.parked)
        };
        drop(parked);
    }

    /// Cuts the power (call unmounted, after [`freeze`](Self::freeze) and
    /// [`power_off`](Self::power_off), or with nothing using the file
    /// system): keeps of the unsynced operations what `mode` says, and a
    /// torn write if a [`Action::Tear`] trigger fired; back to serving the
    /// durable state, triggers disarmed.
    pub fn cut(&self, mode: CutMode, seed: u64) -> CutReport {
        let mut s = self.lock();
        let torn = s.torn.take();
        let report = s.model.cut(mode, torn, &mut Rng::new(seed));
        s.phase = Phase::Live;
        s.triggers.clear();
        s.fired.clear();
        report
    }

    /// Serves again without a cut, after [`freeze`](Self::freeze) and
    /// [`power_off`](Self::power_off): only the process crashed, the
    /// operations it made stay (unsynced) as in a page cache; triggers
    /// disarmed. The operations that were waiting failed and never happened.
    pub fn resume(&self) {
        let mut s = self.lock();
        s.phase = Phase::Live;
        s.triggers.clear();
        s.fired.clear();
        s.torn = None;
        self.inner.changed.notify_all();
    }

    /// Counts of the operations served so far.
    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }

    /// The unsynced operations, one line each (for diagnostics).
    pub fn describe_pending(&self) -> Vec<String> {
        self.lock().model.describe_pending()
    }

    /// Writes the durable state (what a cut now would keep at least) under
    /// the directory `to`.
    pub fn dump_durable(&self, to: &Path) -> io::Result<()> {
        self.lock().model.dump_durable(to)
    }

    /// The durable content of the file at `path` (relative to the root).
    pub fn durable_file(&self, path: &str) -> Option<Vec<u8>> {
        self.lock().model.durable_file(path)
    }

    /// Starts (or stops) logging every changing operation and sync.
    pub fn set_logging(&self, on: bool) {
        self.lock().log = on.then(Vec::new);
    }

    /// The operations logged since the last call.
    pub fn take_log(&self) -> Vec<String> {
        self.lock()
            .log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Unsynced operations now.
    pub fn pending(&self) -> usize {
        self.lock().model.pending()
    }
}

impl Shared {
    /// Lets a request through (`Some`), or parks it (frozen) or fails it
    /// (powered off).
    fn admit<R: Send + 'static>(&mut self, reply: R) -> Option<R> {
        match self.phase {
            Phase::Live => Some(reply),
            Phase::Frozen => {
                self.parked.push(Box::new(reply));
                None
            }
            Phase::Dead => None, // dropped: EIO
        }
    }

    /// Counts an operation of `kind` on `paths` against the armed
    /// triggers; the action of the first that fires.
    fn check(&mut self, kind: OpKind, paths: &[&str]) -> Option<Action> {
        if let Some(log) = self.log.as_mut() {
            log.push(format!("{kind:?} {}", paths.join(" -> ")));
        }
        let mut hit = None;
        for (trigger, count) in &mut self.triggers {
            if trigger.kind != kind || hit.is_some() {
                continue;
            }
            if let Some(path) = paths.iter().find(|p| matches(&trigger.pattern, p)) {
                *count += 1;
                if *count == trigger.nth {
                    hit = Some((trigger.clone(), (*path).to_string()));
                }
            }
        }
        let (trigger, path) = hit?;
        let action = trigger.action;
        self.fired.push(Fired {
            trigger,
            path,
            at: Instant::now(),
        });
        Some(action)
    }

    fn freeze_with<R: Send + 'static>(&mut self, reply: R) {
        self.phase = Phase::Frozen;
        self.parked.push(Box::new(reply));
    }
}

fn attr_of(ino: Ino, a: crate::model::Attr) -> FileAttr {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: UNIX_EPOCH,
        kind: if a.dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if a.dir { 0o755 } else { 0o644 },
        nlink: if a.dir { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl PowerFs {
    fn notify(&self) {
        self.inner.changed.notify_all();
    }

    fn make(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(Ino, FileAttr), Errno> {
        let mut s = self.lock();
        let path = s.model.child_path(parent.0, name);
        match s.check(OpKind::Create, &[&path]) {
            Some(Action::CutBefore | Action::Tear) => {
                s.phase = Phase::Frozen;
                self.notify();
                return Err(Errno::EIO); // never seen: the caller parks
            }
            Some(Action::Fail) => {
                self.notify();
                return Err(Errno::EIO);
            }
            Some(Action::CutAfter) => {
                s.phase = Phase::Frozen;
                self.notify();
            }
            None => {}
        }
        let ino = s.model.create(parent.0, name, dir).map_err(errno)?;
        s.counts.creates += 1;
        let attr = s.model.attr(ino).map_err(errno)?;
        Ok((ino, attr_of(ino, attr)))
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        match s
            .model
            .lookup(parent.0, name)
            .and_then(|ino| s.model.attr(ino).map(|a| (ino, a)))
        {
            Ok((ino, a)) => reply.entry(&TTL, &attr_of(ino, a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        match s.model.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &attr_of(ino.0, a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        let mut frozen_after = false;
        if let Some(len) = size {
            let path = s.model.path(ino.0);
            match s.check(OpKind::SetLen, &[&path]) {
                Some(Action::CutBefore | Action::Tear) => {
                    s.freeze_with(reply);
                    self.notify();
                    return;
                }
                Some(Action::Fail) => {
                    self.notify();
                    return reply.error(Errno::EIO);
                }
                Some(Action::CutAfter) => frozen_after = true,
                None => {}
            }
            if let Err(e) = s.model.set_len(ino.0, len) {
                return reply.error(errno(e));
            }
            s.counts.set_lens += 1;
        }
        match s.model.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &attr_of(ino.0, a)),
            Err(e) => reply.error(errno(e)),
        }
        if frozen_after {
            s.phase = Phase::Frozen;
            self.notify();
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        if self.lock().phase != Phase::Live {
            return self.park_or_fail(reply);
        }
        match self.make(parent, name, false) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => self.fail_or_park(reply, e, |r, e| r.error(e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        if self.lock().phase != Phase::Live {
            return self.park_or_fail(reply);
        }
        match self.make(parent, name, true) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => self.fail_or_park(reply, e, |r, e| r.error(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return reply.error(Errno::EPERM);
        }
        if self.lock().phase != Phase::Live {
            return self.park_or_fail(reply);
        }
        match self.make(parent, name, false) {
            Ok((ino, attr)) => {
                self.lock().model.opened(ino);
                reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(ino),
                    FopenFlags::FOPEN_DIRECT_IO,
                );
            }
            Err(e) => self.fail_or_park(reply, e, |r, e| r.error(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        let from = s.model.child_path(parent.0, name);
        let to = s.model.child_path(newparent.0, newname);
        let mut frozen_after = false;
        match s.check(OpKind::Rename, &[&from, &to]) {
            Some(Action::CutBefore | Action::Tear) => {
                s.freeze_with(reply);
                self.notify();
                return;
            }
            Some(Action::Fail) => {
                self.notify();
                return reply.error(Errno::EIO);
            }
            Some(Action::CutAfter) => frozen_after = true,
            None => {}
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match s
            .model
            .rename(parent.0, name, newparent.0, newname, no_replace)
        {
            Ok(()) => {
                s.counts.renames += 1;
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
        if frozen_after {
            s.phase = Phase::Frozen;
            self.notify();
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        match s.model.attr(ino.0) {
            Ok(_) => {
                s.model.opened(ino.0);
                reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        match s.model.read(ino.0, offset, size) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        let path = s.model.path(ino.0);
        let mut frozen_after = false;
        match s.check(OpKind::Write, &[&path]) {
            Some(Action::CutBefore) => {
                s.freeze_with(reply);
                self.notify();
                return;
            }
            Some(Action::Tear) => {
                s.torn = Some(TornWrite {
                    ino: ino.0,
                    offset,
                    data: data.to_vec(),
                });
                s.freeze_with(reply);
                self.notify();
                return;
            }
            Some(Action::Fail) => {
                self.notify();
                return reply.error(Errno::EIO);
            }
            Some(Action::CutAfter) => frozen_after = true,
            None => {}
        }
        match s.model.write(ino.0, offset, data) {
            Ok(()) => {
                s.counts.writes += 1;
                s.counts.bytes += data.len() as u64;
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(errno(e)),
        }
        if frozen_after {
            s.phase = Phase::Frozen;
            self.notify();
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Closing never waits: a dying process closes its files.
        self.lock().model.released(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, OpKind::Fsync, reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, OpKind::FsyncDir, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.lock();
        let Some(r) = s.admit(reply) else { return };
        reply = r;
        let entries = match s.model.read_dir(ino.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
        };
        let mut all = vec![
            (".".into(), ino.0, true),
            ("..".into(), crate::model::ROOT, true),
        ];
        all.extend(entries);
        for (i, (name, child, dir)) in all.into_iter().enumerate().skip(offset as usize) {
            let kind = if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        reply.ok();
    }
}

impl PowerFs {
    /// A request that arrived while not live: parked (frozen) or failed.
    fn park_or_fail<R: Send + 'static>(&self, reply: R) {
        let _ = self.lock().admit(reply);
    }

    /// After a failed `make`: park the reply if the file system froze
    /// (the trigger cut before the operation), else answer the error.
    fn fail_or_park<R: Send + 'static>(&self, reply: R, e: Errno, answer: impl FnOnce(R, Errno)) {
        let mut s = self.lock();
        if s.phase == Phase::Frozen && e == Errno::EIO {
            s.parked.push(Box::new(reply));
        } else {
            drop(s);
            answer(reply, e);
        }
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        let path = s.model.child_path(parent.0, name);
        let mut frozen_after = false;
        match s.check(OpKind::Unlink, &[&path]) {
            Some(Action::CutBefore | Action::Tear) => {
                s.freeze_with(reply);
                self.notify();
                return;
            }
            Some(Action::Fail) => {
                self.notify();
                return reply.error(Errno::EIO);
            }
            Some(Action::CutAfter) => frozen_after = true,
            None => {}
        }
        match s.model.unlink(parent.0, name, dir) {
            Ok(()) => {
                s.counts.unlinks += 1;
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
        if frozen_after {
            s.phase = Phase::Frozen;
            self.notify();
        }
    }

    fn sync(&self, ino: INodeNo, kind: OpKind, reply: ReplyEmpty) {
        let mut s = self.lock();
        let Some(reply) = s.admit(reply) else { return };
        let path = s.model.path(ino.0);
        let mut frozen_after = false;
        match s.check(kind, &[&path]) {
            Some(Action::CutBefore | Action::Tear) => {
                s.freeze_with(reply);
                self.notify();
                return;
            }
            Some(Action::Fail) => {
                if kind == OpKind::Fsync {
                    s.model.fail_fsync(ino.0);
                }
                self.notify();
                return reply.error(Errno::EIO);
            }
            Some(Action::CutAfter) => frozen_after = true,
            None => {}
        }
        let result = if kind == OpKind::Fsync {
            s.counts.fsyncs += 1;
            s.model.fsync(ino.0)
        } else {
            s.counts.dir_fsyncs += 1;
            s.model.fsync_dir(ino.0)
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
        if frozen_after {
            s.phase = Phase::Frozen;
            self.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns() {
        assert!(matches("db", "db"));
        assert!(!matches("db", "dbx"));
        assert!(matches("snap.*", "snap.0000.generating"));
        assert!(matches("blobs/*", "blobs/12"));
        assert!(!matches("blobs/*", "blobs"));
        assert!(matches("*.wal", "durable.wal"));
        assert!(matches("*", "anything"));
    }
}
