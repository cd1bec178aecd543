//! The file system's state, without FUSE: what processes see (`live`), what
//! survives a power cut (`durable`), and the operations in between
//! (`pending`, in the order they happened).
//!
//! The model, a journaling file system in ordered mode, seen pessimistically:
//! - **Data** (writes, truncations) of a file reaches the disk only at an
//!   `fsync`/`fdatasync` of that file. Until then a cut may keep any subset of
//!   its unsynced writes (the kernel writes pages back in any order), and
//!   tear one of them (keep a prefix of its bytes).
//! - **Metadata** (create, mkdir, unlink, rmdir, rename) goes through one
//!   journal, in order: what a cut keeps of it is a prefix of the unsynced
//!   metadata operations (possibly all of them: the journal commits on its
//!   own every few seconds). An `fsync` of a directory commits the journal up
//!   to the last operation on an entry of that directory; an `fsync` of a
//!   file commits it up to the creation of that file (its own entry), and no
//!   further: a rename of a file is durable only once its directory is
//!   fsynced.
//! - Synced data and metadata are never lost, and nothing a process did not
//!   do ever appears (no garbage blocks).
//! - A failed `fsync` (injected EIO) drops the file's unsynced writes for
//!   good, as Linux does: the page cache still shows them until the cut, but
//!   the disk never gets them.
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::{SystemTime, UNIX_EPOCH};

/// An inode number. The root directory is [`ROOT`].
pub type Ino = u64;

/// The root directory's inode number.
pub const ROOT: Ino = 1;

/// An errno value.
pub type Errno = i32;

#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, Ino>),
}

/// One state of the file system: inodes, some of them reachable from the
/// root.
#[derive(Clone, Debug)]
struct Tree {
    nodes: HashMap<Ino, Node>,
}

impl Tree {
    fn new() -> Tree {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::Dir(BTreeMap::new()));
        Tree { nodes }
    }

    fn dir_mut(&mut self, ino: Ino) -> Option<&mut BTreeMap<OsString, Ino>> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(entries)) => Some(entries),
            _ => None,
        }
    }

    fn file_mut(&mut self, ino: Ino) -> &mut Vec<u8> {
        let node = self.nodes.entry(ino).or_insert(Node::File(Vec::new()));
        if let Node::Dir(_) = node {
            *node = Node::File(Vec::new());
        }
        match node {
            Node::File(data) => data,
            Node::Dir(_) => unreachable!("just made a file"),
        }
    }

    /// Applies `op` as well as this state allows (an entry whose directory
    /// is missing is dropped, as a journal replay would).
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Link {
                parent,
                name,
                ino,
                dir,
            } => {
                if !self.nodes.contains_key(ino) {
                    let node = if *dir {
                        Node::Dir(BTreeMap::new())
                    } else {
                        Node::File(Vec::new())
                    };
                    self.nodes.insert(*ino, node);
                }
                if let Some(entries) = self.dir_mut(*parent) {
                    entries.insert(name.clone(), *ino);
                }
            }
            Op::Unlink { parent, name } => {
                if let Some(entries) = self.dir_mut(*parent) {
                    entries.remove(name);
                }
            }
            Op::Rename {
                from,
                from_name,
                to,
                to_name,
            } => {
                let Some(ino) = self.dir_mut(*from).and_then(|e| e.remove(from_name)) else {
                    return;
                };
                if let Some(entries) = self.dir_mut(*to) {
                    entries.insert(to_name.clone(), ino);
                }
            }
            Op::Write { ino, offset, data } => {
                let file = self.file_mut(*ino);
                let end = *offset as usize + data.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[*offset as usize..end].copy_from_slice(data);
            }
            Op::SetLen { ino, len } => self.file_mut(*ino).resize(*len as usize, 0),
        }
    }

    /// Frees the inodes no entry reaches (what `fsck` or the orphan list
    /// does at mount).
    fn collect_garbage(&mut self) {
        let mut reachable = std::collections::HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !reachable.insert(ino) {
                continue;
            }
            if let Some(Node::Dir(entries)) = self.nodes.get(&ino) {
                stack.extend(entries.values().copied());
            }
        }
        self.nodes.retain(|ino, _| reachable.contains(ino));
    }
}

/// One operation not yet durable.
#[derive(Clone, Debug)]
enum Op {
    /// A new entry `name` in `parent` for the new inode `ino`.
    Link {
        parent: Ino,
        name: OsString,
        ino: Ino,
        dir: bool,
    },
    Unlink {
        parent: Ino,
        name: OsString,
    },
    Rename {
        from: Ino,
        from_name: OsString,
        to: Ino,
        to_name: OsString,
    },
    Write {
        ino: Ino,
        offset: u64,
        data: Vec<u8>,
    },
    SetLen {
        ino: Ino,
        len: u64,
    },
}

impl Op {
    fn is_metadata(&self) -> bool {
        matches!(
            self,
            Op::Link { .. } | Op::Unlink { .. } | Op::Rename { .. }
        )
    }

    /// The file whose data this operation changes.
    fn data_of(&self) -> Option<Ino> {
        match self {
            Op::Write { ino, .. } | Op::SetLen { ino, .. } => Some(*ino),
            _ => None,
        }
    }

    fn touches_dir(&self, dir: Ino) -> bool {
        match self {
            Op::Link { parent, .. } | Op::Unlink { parent, .. } => *parent == dir,
            Op::Rename { from, to, .. } => *from == dir || *to == dir,
            _ => false,
        }
    }

    fn creates(&self, file: Ino) -> bool {
        matches!(self, Op::Link { ino, .. } if *ino == file)
    }
}

/// What a power cut keeps of the operations that were not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CutMode {
    /// Nothing: only what was synced survives.
    LoseAll,
    /// Every unsynced metadata operation (the journal committed), none of
    /// the unsynced data (as LazyFS does).
    KeepMetadata,
    /// A random prefix of the unsynced metadata, a random subset of the
    /// unsynced writes, and, half of the time, one kept write torn.
    Random,
}

/// A write a cut keeps only a prefix of, chosen before the cut: the write
/// that the file system stopped at, and every earlier unsynced write of the
/// same file, reach the disk, the last one torn.
#[derive(Clone, Debug)]
pub struct TornWrite {
    /// The file.
    pub ino: Ino,
    /// Where the write began.
    pub offset: u64,
    /// All the bytes it would have written.
    pub data: Vec<u8>,
}

/// What a cut did.
#[derive(Clone, Debug, Default)]
pub struct CutReport {
    /// Operations that were not synced when the power went.
    pub pending: usize,
    /// Of those, the ones that reached the disk anyway.
    pub kept: usize,
    /// Bytes of unsynced writes lost.
    pub lost_bytes: u64,
    /// A torn write: the file's path, the bytes kept and the write's length.
    pub torn: Option<(String, usize, usize)>,
}

/// A small seeded generator (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose choices depend only on `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// The state of the file system: the live view, the durable one, and the
/// unsynced operations between them.
#[derive(Debug)]
pub struct Model {
    live: Tree,
    durable: Tree,
    pending: Vec<Op>,
    next_ino: Ino,
    /// The entry of each live inode (one per inode: no hard links).
    names: HashMap<Ino, (Ino, OsString)>,
    /// Open handles per live inode.
    open: HashMap<Ino, u32>,
    /// Last change of each live inode's content or entries (programs such
    /// as the store rely on a directory's mtime changing).
    mtimes: HashMap<Ino, SystemTime>,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

/// The kind of a live inode and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// A directory (else a regular file).
    pub dir: bool,
    /// Bytes (0 for a directory).
    pub size: u64,
    /// Last change of its content (a file) or entries (a directory).
    pub mtime: SystemTime,
}

impl Model {
    /// An empty file system: the root directory, durable.
    pub fn new() -> Model {
        Model {
            live: Tree::new(),
            durable: Tree::new(),
            pending: Vec::new(),
            next_ino: ROOT + 1,
            names: HashMap::new(),
            open: HashMap::new(),
            mtimes: HashMap::new(),
        }
    }

    fn touch(&mut self, ino: Ino) {
        self.mtimes.insert(ino, SystemTime::now());
    }

    /// The inode `name` in directory `parent` names.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        match self.live.nodes.get(&parent) {
            Some(Node::Dir(entries)) => entries.get(name).copied().ok_or(libc::ENOENT),
            Some(Node::File(_)) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    /// The kind and size of a live inode.
    pub fn attr(&self, ino: Ino) -> Result<Attr, Errno> {
        let mtime = self.mtimes.get(&ino).copied().unwrap_or(UNIX_EPOCH);
        match self.live.nodes.get(&ino) {
            Some(Node::File(data)) => Ok(Attr {
                dir: false,
                size: data.len() as u64,
                mtime,
            }),
            Some(Node::Dir(_)) => Ok(Attr {
                dir: true,
                size: 0,
                mtime,
            }),
            None => Err(libc::ENOENT),
        }
    }

    /// The entries of directory `ino`: (name, inode, is a directory).
    pub fn read_dir(&self, ino: Ino) -> Result<Vec<(OsString, Ino, bool)>, Errno> {
        match self.live.nodes.get(&ino) {
            Some(Node::Dir(entries)) => Ok(entries
                .iter()
                .map(|(name, &child)| {
                    let dir = matches!(self.live.nodes.get(&child), Some(Node::Dir(_)));
                    (name.clone(), child, dir)
                })
                .collect()),
            Some(Node::File(_)) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    /// The path of a live inode from the root ("" for the root; `?` for an
    /// unlinked one).
    pub fn path(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT {
            match self.names.get(&at) {
                Some((parent, name)) => {
                    parts.push(name.to_string_lossy().into_owned());
                    at = *parent;
                }
                None => {
                    parts.push("?".to_string());
                    break;
                }
            }
            if parts.len() > 64 {
                break;
            }
        }
        parts.reverse();
        parts.join("/")
    }

    /// The path `name` in directory `parent` has (or would have).
    pub fn child_path(&self, parent: Ino, name: &OsStr) -> String {
        let base = self.path(parent);
        if base.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{base}/{}", name.to_string_lossy())
        }
    }

    /// Creates a file or directory `name` in `parent`.
    pub fn create(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<Ino, Errno> {
        match self.lookup(parent, name) {
            Ok(_) => return Err(libc::EEXIST),
            Err(libc::ENOENT) if self.live.dir_mut(parent).is_some() => {}
            Err(e) => return Err(e),
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let op = Op::Link {
            parent,
            name: name.to_os_string(),
            ino,
            dir,
        };
        self.live.apply(&op);
        self.pending.push(op);
        self.names.insert(ino, (parent, name.to_os_string()));
        self.touch(ino);
        self.touch(parent);
        Ok(ino)
    }

    /// Removes the entry `name` from `parent` (`dir`: it must be an empty
    /// directory; else it must not be a directory).
    pub fn unlink(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match (self.live.nodes.get(&ino), dir) {
            (Some(Node::Dir(entries)), true) if !entries.is_empty() => {
                return Err(libc::ENOTEMPTY);
            }
            (Some(Node::Dir(_)), false) => return Err(libc::EISDIR),
            (Some(Node::File(_)), true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        let op = Op::Unlink {
            parent,
            name: name.to_os_string(),
        };
        self.live.apply(&op);
        self.pending.push(op);
        self.names.remove(&ino);
        self.touch(parent);
        self.forget_if_gone(ino);
        Ok(())
    }

    /// Renames `from/name` to `to/new_name`, replacing what is there unless
    /// `no_replace`.
    pub fn rename(
        &mut self,
        from: Ino,
        name: &OsStr,
        to: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(from, name)?;
        if self.live.dir_mut(to).is_none() {
            return Err(libc::ENOENT);
        }
        let replaced = self.lookup(to, new_name).ok();
        if let Some(old) = replaced {
            if old == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (self.live.nodes.get(&old), self.live.nodes.get(&ino)) {
                (Some(Node::Dir(entries)), Some(Node::Dir(_))) if !entries.is_empty() => {
                    return Err(libc::ENOTEMPTY);
                }
                (Some(Node::Dir(_)), Some(Node::File(_))) => return Err(libc::EISDIR),
                (Some(Node::File(_)), Some(Node::Dir(_))) => return Err(libc::ENOTDIR),
                _ => {}
            }
        }
        let op = Op::Rename {
            from,
            from_name: name.to_os_string(),
            to,
            to_name: new_name.to_os_string(),
        };
        self.live.apply(&op);
        self.pending.push(op);
        self.names.insert(ino, (to, new_name.to_os_string()));
        self.touch(from);
        self.touch(to);
        if let Some(old) = replaced {
            self.names.remove(&old);
            self.forget_if_gone(old);
        }
        Ok(())
    }

    /// Reads up to `size` bytes of file `ino` at `offset`.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Errno> {
        match self.live.nodes.get(&ino) {
            Some(Node::File(data)) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(&data[start..end])
            }
            Some(Node::Dir(_)) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }
    }

    /// Writes `data` to file `ino` at `offset` (not yet durable).
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match self.live.nodes.get(&ino) {
            Some(Node::File(_)) => {}
            Some(Node::Dir(_)) => return Err(libc::EISDIR),
            None => return Err(libc::ENOENT),
        }
        let op = Op::Write {
            ino,
            offset,
            data: data.to_vec(),
        };
        self.live.apply(&op);
        self.pending.push(op);
        self.touch(ino);
        Ok(())
    }

    /// Truncates or extends file `ino` to `len` bytes (not yet durable).
    pub fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), Errno> {
        match self.live.nodes.get(&ino) {
            Some(Node::File(_)) => {}
            Some(Node::Dir(_)) => return Err(libc::EISDIR),
            None => return Err(libc::ENOENT),
        }
        let op = Op::SetLen { ino, len };
        self.live.apply(&op);
        self.pending.push(op);
        self.touch(ino);
        Ok(())
    }

    /// A handle on `ino` was opened.
    pub fn opened(&mut self, ino: Ino) {
        *self.open.entry(ino).or_default() += 1;
    }

    /// A handle on `ino` was closed.
    pub fn released(&mut self, ino: Ino) {
        if let Some(n) = self.open.get_mut(&ino) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&ino);
            }
        }
        self.forget_if_gone(ino);
    }

    /// Drops a live inode that no entry names and no handle holds, and its
    /// unsynced writes if the durable state never had it.
    fn forget_if_gone(&mut self, ino: Ino) {
        if ino == ROOT || self.names.contains_key(&ino) || self.open.contains_key(&ino) {
            return;
        }
        self.live.nodes.remove(&ino);
        self.mtimes.remove(&ino);
        if !self.durable.nodes.contains_key(&ino) {
            self.pending.retain(|op| op.data_of() != Some(ino));
        }
    }

    /// Makes durable the metadata operations up to the last one `wanted`
    /// picks (the journal commits in order).
    fn commit_metadata_through(&mut self, wanted: impl Fn(&Op) -> bool) {
        let Some(last) = self
            .pending
            .iter()
            .rposition(|op| op.is_metadata() && wanted(op))
        else {
            return;
        };
        let mut rest = Vec::with_capacity(self.pending.len());
        for (i, op) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if i <= last && op.is_metadata() {
                self.durable.apply(&op);
            } else {
                rest.push(op);
            }
        }
        self.pending = rest;
    }

    /// `fsync` or `fdatasync` of file `ino`: its data, and its own entry if
    /// it was just created, become durable.
    pub fn fsync(&mut self, ino: Ino) -> Result<(), Errno> {
        match self.live.nodes.get(&ino) {
            Some(Node::Dir(_)) => return self.fsync_dir(ino),
            Some(Node::File(_)) => {}
            None => return Err(libc::ENOENT),
        }
        let mut rest = Vec::with_capacity(self.pending.len());
        for op in std::mem::take(&mut self.pending) {
            if op.data_of() == Some(ino) {
                self.durable.apply(&op);
            } else {
                rest.push(op);
            }
        }
        self.pending = rest;
        self.commit_metadata_through(|op| op.creates(ino));
        Ok(())
    }

    /// `fsync` of directory `ino`: the changes to its entries (and every
    /// metadata operation before them) become durable.
    pub fn fsync_dir(&mut self, ino: Ino) -> Result<(), Errno> {
        if self.live.dir_mut(ino).is_none() {
            return Err(libc::ENOTDIR);
        }
        self.commit_metadata_through(|op| op.touches_dir(ino));
        Ok(())
    }

    /// A failed `fsync` of file `ino`: its unsynced writes never reach the
    /// disk (the live view keeps them until the cut).
    pub fn fail_fsync(&mut self, ino: Ino) {
        self.pending.retain(|op| op.data_of() != Some(ino));
    }

    /// The unsynced operations, one line each (for diagnostics).
    pub fn describe_pending(&self) -> Vec<String> {
        self.pending
            .iter()
            .map(|op| match op {
                Op::Link { parent, name, .. } => {
                    format!("create {}", self.child_path(*parent, name))
                }
                Op::Unlink { parent, name } => format!("unlink {}", self.child_path(*parent, name)),
                Op::Rename {
                    from,
                    from_name,
                    to,
                    to_name,
                } => format!(
                    "rename {} -> {}",
                    self.child_path(*from, from_name),
                    self.child_path(*to, to_name)
                ),
                Op::Write { ino, offset, data } => {
                    format!("write {} at {offset} +{}", self.path(*ino), data.len())
                }
                Op::SetLen { ino, len } => format!("set_len {} {len}", self.path(*ino)),
            })
            .collect()
    }

    /// Unsynced operations.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Cuts the power: keeps of the unsynced operations what `mode` (and
    /// `torn`) says, drops the rest, and starts again from the durable
    /// state, as a reboot does. Nothing may be open any more.
    pub fn cut(&mut self, mode: CutMode, torn: Option<TornWrite>, rng: &mut Rng) -> CutReport {
        let pending = std::mem::take(&mut self.pending);
        let mut report = CutReport {
            pending: pending.len(),
            ..CutReport::default()
        };
        let metadata = pending.iter().filter(|op| op.is_metadata()).count() as u64;
        let meta_kept = match mode {
            CutMode::LoseAll => 0,
            CutMode::KeepMetadata => metadata,
            CutMode::Random => rng.below(metadata + 1),
        };
        let mut kept: Vec<Op> = Vec::new();
        let mut meta_seen = 0;
        for op in pending {
            let keep = if op.is_metadata() {
                meta_seen += 1;
                meta_seen <= meta_kept
            } else if torn.as_ref().is_some_and(|t| op.data_of() == Some(t.ino)) {
                true
            } else {
                mode == CutMode::Random && rng.below(2) == 0
            };
            if keep {
                kept.push(op);
            } else if let Op::Write { data, .. } = &op {
                report.lost_bytes += data.len() as u64;
            }
        }
        if let Some(t) = torn {
            let keep = rng.below(t.data.len() as u64) as usize;
            report.torn = Some((self.path(t.ino), keep, t.data.len()));
            report.lost_bytes += (t.data.len() - keep) as u64;
            kept.push(Op::Write {
                ino: t.ino,
                offset: t.offset,
                data: t.data[..keep].to_vec(),
            });
        } else if mode == CutMode::Random && rng.below(2) == 0 {
            let writes: Vec<usize> = (0..kept.len())
                .filter(|&i| matches!(&kept[i], Op::Write { data, .. } if !data.is_empty()))
                .collect();
            if !writes.is_empty() {
                let at = writes[rng.below(writes.len() as u64) as usize];
                let path = kept[at].data_of().map(|ino| self.path(ino));
                if let Op::Write { data, .. } = &mut kept[at] {
                    let len = data.len();
                    let keep = rng.below(len as u64) as usize;
                    data.truncate(keep);
                    report.lost_bytes += (len - keep) as u64;
                    report.torn = Some((path.unwrap_or_default(), keep, len));
                }
            }
        }
        report.kept = kept.len();
        for op in &kept {
            self.durable.apply(op);
        }
        self.durable.collect_garbage();
        self.live = self.durable.clone();
        self.open.clear();
        self.names.clear();
        // A reboot: every inode's mtime is now, so none looks unchanged.
        let now = SystemTime::now();
        self.mtimes = self.live.nodes.keys().map(|&ino| (ino, now)).collect();
        for (&ino, node) in &self.live.nodes {
            if let Node::Dir(entries) = node {
                for (name, &child) in entries {
                    self.names.insert(child, (ino, name.clone()));
                }
            }
        }
        report
    }

    /// Writes the durable state under `to` (a directory), for a look at
    /// what a cut left.
    pub fn dump_durable(&self, to: &std::path::Path) -> std::io::Result<()> {
        fn dump(tree: &Tree, ino: Ino, to: &std::path::Path) -> std::io::Result<()> {
            match tree.nodes.get(&ino) {
                Some(Node::File(data)) => std::fs::write(to, data),
                Some(Node::Dir(entries)) => {
                    std::fs::create_dir_all(to)?;
                    for (name, &child) in entries {
                        dump(tree, child, &to.join(name))?;
                    }
                    Ok(())
                }
                None => Ok(()),
            }
        }
        dump(&self.durable, ROOT, to)
    }

    /// The durable content of the file at `path` (for tests).
    pub fn durable_file(&self, path: &str) -> Option<Vec<u8>> {
        let mut at = ROOT;
        for part in path.split('/') {
            match self.durable.nodes.get(&at) {
                Some(Node::Dir(entries)) => at = *entries.get(OsStr::new(part))?,
                _ => return None,
            }
        }
        match self.durable.nodes.get(&at) {
            Some(Node::File(data)) => Some(data.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn rng() -> Rng {
        Rng::new(7)
    }

    #[test]
    fn only_synced_data_survives_a_cut() {
        let mut m = Model::new();
        let f = m.create(ROOT, name("f"), false).unwrap();
        m.write(f, 0, b"hello").unwrap();
        m.fsync(f).unwrap();
        m.write(f, 5, b" world").unwrap();
        assert_eq!(m.read(f, 0, 100).unwrap(), b"hello world");
        m.cut(CutMode::LoseAll, None, &mut rng());
        assert_eq!(m.durable_file("f").unwrap(), b"hello");
        let f = m.lookup(ROOT, name("f")).unwrap();
        assert_eq!(m.read(f, 0, 100).unwrap(), b"hello");
    }

    #[test]
    fn a_file_never_synced_is_gone_after_a_cut() {
        let mut m = Model::new();
        let f = m.create(ROOT, name("f"), false).unwrap();
        m.write(f, 0, b"x").unwrap();
        m.cut(CutMode::LoseAll, None, &mut rng());
        assert_eq!(m.lookup(ROOT, name("f")), Err(libc::ENOENT));
    }

    #[test]
    fn fsync_of_a_file_makes_its_creation_durable_but_not_a_rename() {
        let mut m = Model::new();
        let f = m.create(ROOT, name("a"), false).unwrap();
        m.fsync(f).unwrap();
        m.rename(ROOT, name("a"), ROOT, name("b"), false).unwrap();
        m.fsync(f).unwrap();
        m.cut(CutMode::LoseAll, None, &mut rng());
        assert!(m.lookup(ROOT, name("a")).is_ok());
        assert!(m.lookup(ROOT, name("b")).is_err());
    }

    #[test]
    fn fsync_of_the_directory_makes_a_rename_durable() {
        let mut m = Model::new();
        let f = m.create(ROOT, name("a"), false).unwrap();
        m.write(f, 0, b"data").unwrap();
        m.fsync(f).unwrap();
        m.rename(ROOT, name("a"), ROOT, name("b"), false).unwrap();
        m.fsync_dir(ROOT).unwrap();
        m.cut(CutMode::LoseAll, None, &mut rng());
        assert_eq!(m.durable_file("b").unwrap(), b"data");
        assert!(m.durable_file("a").is_none());
    }

    #[test]
    fn metadata_without_data_is_a_possible_cut() {
        let mut m = Model::new();
        let d = m.create(ROOT, name("d"), true).unwrap();
        m.fsync_dir(ROOT).unwrap();
        let f = m.create(d, name("f"), false).unwrap();
        m.write(f, 0, b"data").unwrap();
        m.cut(CutMode::KeepMetadata, None, &mut rng());
        assert_eq!(m.durable_file("d/f").unwrap(), b"");
    }

    #[test]
    fn a_torn_write_keeps_the_earlier_writes_and_a_prefix() {
        let mut m = Model::new();
        let f = m.create(ROOT, name("conf"), false).unwrap();
        m.fsync_dir(ROOT).unwrap();
        m.write(f, 0, b"text").unwrap();
        let torn = TornWrite {
            ino: f,
            offset: 4,
            data: b"CRC!".to_vec(),
        };
        let report = m.cut(CutMode::LoseAll, Some(torn), &mut rng());
        let data = m.durable_file("conf").unwrap();
        assert!(data.starts_with(b"text") && data.len() < 8, "{data:?}");
        assert_eq!(report.torn.unwrap().2, 4);
    }

    #[test]
    fn a_failed_fsync_loses_the_writes_for_good() {
        let mut m = Model::new();
        let f = m.create(ROOT, name("f"), false).unwrap();
        m.fsync(f).unwrap();
        m.write(f, 0, b"lost").unwrap();
        m.fail_fsync(f);
        m.fsync(f).unwrap();
        assert_eq!(m.read(f, 0, 10).unwrap(), b"lost");
        m.cut(CutMode::Random, None, &mut rng());
        assert_eq!(m.durable_file("f").unwrap(), b"");
    }

    #[test]
    fn random_cuts_keep_a_prefix_of_the_metadata() {
        for seed in 0..64 {
            let mut m = Model::new();
            for i in 0..8 {
                m.create(ROOT, name(&format!("f{i}")), false).unwrap();
            }
            m.cut(CutMode::Random, None, &mut Rng::new(seed));
            let present: Vec<bool> = (0..8)
                .map(|i| m.lookup(ROOT, name(&format!("f{i}"))).is_ok())
                .collect();
            let kept = present.iter().take_while(|p| **p).count();
            assert!(present[kept..].iter().all(|p| !p), "{present:?}");
        }
    }

    #[test]
    fn an_unlinked_open_file_stays_readable_until_closed() {
        let mut m = Model::new();
        let f = m.create(ROOT, name("f"), false).unwrap();
        m.opened(f);
        m.write(f, 0, b"x").unwrap();
        m.unlink(ROOT, name("f"), false).unwrap();
        assert_eq!(m.read(f, 0, 1).unwrap(), b"x");
        m.released(f);
        assert_eq!(m.read(f, 0, 1), Err(libc::ENOENT));
        assert_eq!(
            m.pending(),
            2,
            "create and unlink remain, the write is gone"
        );
    }
}
