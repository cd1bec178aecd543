//! Corrupt and hostile stores: guards "clear failure" when the files under
//! a store are damaged. A valid store is built (finished instances, a value
//! in a blob file, unfinished instances, a snapshot); then each kind of file
//! in it (`conf`, `db`, the snapshot, a blob, the lock file) is deleted,
//! truncated or has bits flipped at seeded offsets, in a copy. A child
//! process (this binary, re-run as `corrupt_child`) opens each copy and runs
//! every instance: `open` must return a typed error, or succeed with correct
//! data: every instance the store still knows finishes with its right
//! output or fails with a typed error. Never a panic, a wrong value or a
//! hang. Instances the damage made the store forget (sled takes a damaged
//! log for a torn write and recovers the part before it) are counted and
//! printed: that loss is the limit of what a store without redundancy can do.
//!
//! Also: records whose length prefixes claim gigabytes decode to typed
//! errors without allocating them. `DURABLE_CORRUPT_SEED` replays a seed.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use durable::prelude::*;
use durable::store::{Batch, SledStore, Store, Tree};
use durable::{Status, StoreError};
use support::{Rng, mix};

/// The system allocator, noting the largest single allocation asked for.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// While set, `pipeline` waits in its third step (the parent sets it while
/// it builds unfinished instances).
static PARK: AtomicBool = AtomicBool::new(false);
/// Times a body of `pipeline`'s third step began.
static PARKED: AtomicUsize = AtomicUsize::new(0);

async fn park() -> Result<(), String> {
    PARKED.fetch_add(1, Ordering::SeqCst);
    while PARK.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The output of `pipeline(n)`.
fn expected(n: u64) -> u64 {
    mix(mix(n) + 1) ^ 7
}

/// Bytes a step returns: large (a blob file of its own) when `n` is big.
fn payload(n: u64) -> Vec<u8> {
    let len = if n >= 1000 { 200 << 10 } else { 64 };
    vec![(n & 0xFF) as u8; len]
}

#[durable]
async fn pipeline(_ctx: &Ctx, n: u64) -> Result<u64, String> {
    let a = step!("a", async { Ok::<u64, String>(mix(n)) }.await)?;
    let bytes = step!("b", async { Ok::<Vec<u8>, String>(payload(n)) }.await)?;
    if bytes != payload(n) {
        return Err(format!("step b replayed {} wrong bytes", bytes.len()));
    }
    step!("park", park().await)?;
    let c = step!("c", async { Ok::<u64, String>(mix(a + 1)) }.await)?;
    Ok(c ^ 7)
}

/// Every instance the valid store holds, with its input.
const INSTANCES: [(&str, u64); 6] = [
    ("done-0", 1),
    ("done-1", 2),
    ("done-2", 3),
    ("big-0", 4242),
    ("open-0", 5),
    ("open-1", 6),
];

/// Builds the valid store in `path`: four finished instances (one with a
/// blob), two parked in their third step, and a second open so sled writes
/// a snapshot.
async fn build_store(path: &Path) {
    PARK.store(false, Ordering::SeqCst);
    let engine = Engine::builder()
        .path(path)
        .register(pipeline)
        .open()
        .await
        .unwrap();
    for (id, n) in &INSTANCES[..4] {
        assert_eq!(
            engine.run(pipeline, *id, *n).await.unwrap(),
            Ok(expected(*n))
        );
    }
    PARK.store(true, Ordering::SeqCst);
    PARKED.store(0, Ordering::SeqCst);
    for (id, n) in &INSTANCES[4..] {
        let _ = engine.start(pipeline, *id, *n).await.unwrap();
    }
    let parked = async |engine: &Engine| {
        let mut steps = Vec::new();
        for (id, _) in &INSTANCES[4..] {
            steps.push(engine.history(id).await.map(|h| h.steps.len()).ok());
        }
        if steps.iter().all(|s| s.is_some_and(|n| n >= 2)) {
            Ok(())
        } else {
            Err(format!("steps recorded: {steps:?}"))
        }
    };
    support::wait_until("the instances to park", async || parked(&engine).await).await;
    engine.shutdown().await;
    // Reopen: recovery resumes the parked instances (they park again) and
    // sled writes a snapshot.
    PARKED.store(0, Ordering::SeqCst);
    let engine = Engine::builder()
        .path(path)
        .register(pipeline)
        .open()
        .await
        .unwrap();
    support::wait_until("the resumed instances to park again", async || match PARKED
        .load(Ordering::SeqCst)
    {
        2 => Ok(()),
        n => Err(format!("{n} of 2 back in their third step")),
    })
    .await;
    engine.shutdown().await;
    PARK.store(false, Ordering::SeqCst);
}

/// The store's files, as paths relative to it, by kind.
fn files(store: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let kind = match name.as_str() {
            "conf" => "conf",
            "db" => "db",
            "durable.lock" => "lock",
            "blobs" => continue,
            n if n.starts_with("snap.") => "snapshot",
            _ => "other",
        };
        out.push((kind, PathBuf::from(name)));
    }
    let mut blobs: Vec<PathBuf> = std::fs::read_dir(store.join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| Path::new("blobs").join(e.file_name()))
        .collect();
    blobs.sort();
    out.extend(blobs.into_iter().take(2).map(|b| ("blob", b)));
    out
}

#[derive(Debug, Clone)]
enum Damage {
    Delete,
    Truncate(u64),
    /// Flip one bit at (offset, bit).
    FlipBit(u64, u8),
    /// Overwrite `len` bytes at offset with seeded garbage.
    Garbage(u64, u64),
}

fn apply_damage(file: &Path, damage: &Damage, rng: &mut Rng) {
    match *damage {
        Damage::Delete => std::fs::remove_file(file).unwrap(),
        Damage::Truncate(len) => std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(len)
            .unwrap(),
        Damage::FlipBit(offset, bit) => {
            let mut bytes = std::fs::read(file).unwrap();
            bytes[offset as usize] ^= 1 << bit;
            std::fs::write(file, bytes).unwrap();
        }
        Damage::Garbage(offset, len) => {
            let mut bytes = std::fs::read(file).unwrap();
            for b in &mut bytes[offset as usize..(offset + len) as usize] {
                *b = rng.next_u64() as u8;
            }
            std::fs::write(file, bytes).unwrap();
        }
    }
}

/// The damages tried on one file: `len` bytes, of which the first `used`
/// hold data (sled's log is preallocated in zeroed 512 KiB segments).
fn damages(kind: &str, len: u64, used: u64, rng: &mut Rng) -> Vec<Damage> {
    let mut out = vec![Damage::Delete];
    if len == 0 {
        return out;
    }
    out.push(Damage::Truncate(0));
    out.push(Damage::Truncate(1 + rng.below(used.max(1))));
    out.push(Damage::Truncate(len - 1));
    let flips = if kind == "db" { 24 } else { 4 };
    for _ in 0..flips {
        out.push(Damage::FlipBit(rng.below(used.max(1)), rng.below(8) as u8));
    }
    let run = used.clamp(1, 256);
    out.push(Damage::Garbage(rng.below(used.max(run) - run + 1), run));
    out
}

/// Bytes up to the last non-zero one.
fn used_len(file: &Path) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p as u64 + 1)
}

const CHILD: &str = "DURABLE_CORRUPT_CHILD";

/// Runs in the child: opens the damaged store and runs every instance,
/// printing one `@@` line per finding. A hang (an open or a run still
/// pending after a quarter of the hang guard) is the last finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_child() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "@@{line}");
        let _ = out.flush();
    };
    let guard = support::hang_guard() / 4;
    let opened = tokio::time::timeout(
        guard,
        Engine::builder().path(&path).register(pipeline).open(),
    )
    .await;
    let engine = match opened {
        Err(_) => return say("HANG open".into()),
        Ok(Err(Error::Store(e))) => return say(format!("OPEN-ERROR {}", store_error_kind(&e))),
        Ok(Err(e)) => return say(format!("UNTYPED open: {e:?}")),
        Ok(Ok(engine)) => engine,
    };
    for (id, n) in INSTANCES {
        let known = !matches!(
            engine.status(id).await,
            Err(Error::Usage(UsageError::NotFound { .. }))
        );
        let run = tokio::time::timeout(guard, engine.run(pipeline, id, n)).await;
        match run {
            Err(_) => return say(format!("HANG {id}")),
            Ok(Ok(Ok(v))) if v == expected(n) => say(format!("OK {id} {known}")),
            Ok(Ok(other)) => say(format!("WRONG {id}: {other:?}")),
            Ok(Err(e)) => say(format!("ERROR {id} {known}: {e}")),
        }
    }
    engine.shutdown().await;
    say("END".into());
}

fn store_error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::Corrupt { .. } => "Corrupt",
        StoreError::Io { .. } => "Io",
        StoreError::Decode { .. } => "Decode",
        StoreError::FormatTooNew { .. } => "FormatTooNew",
        StoreError::Locked { .. } => "Locked",
        _ => "Other",
    }
}

/// How one damaged copy fared.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    open_errors: usize,
    intact: usize,
    forgot: usize,
    instance_errors: usize,
}

/// Runs the child on `store`; returns the findings or a violation.
fn check_copy(store: &Path, tally: &Mutex<Tally>) -> Result<(), String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "corrupt_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, store)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = support::wait_child(&mut child, "the child's exit", support::hang_guard())?;
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !status.success() {
        return Err(format!("the child failed ({status}): {stderr}"));
    }
    if stderr.contains("panicked") {
        return Err(format!("a thread panicked: {stderr}"));
    }
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("@@").map(|(_, m)| m))
        .collect();
    let mut t = tally.lock().unwrap();
    t.cases += 1;
    if let Some(bad) = lines
        .iter()
        .find(|l| l.starts_with("HANG") || l.starts_with("WRONG") || l.starts_with("UNTYPED"))
    {
        return Err(bad.to_string());
    }
    if lines.iter().any(|l| l.starts_with("OPEN-ERROR")) {
        t.open_errors += 1;
        return Ok(());
    }
    if !lines.contains(&"END") {
        return Err(format!("the child stopped early: {lines:?}"));
    }
    let forgot = lines.iter().filter(|l| l.ends_with(" false")).count();
    let errors = lines.iter().filter(|l| l.starts_with("ERROR")).count();
    if forgot > 0 {
        t.forgot += 1;
    } else if errors > 0 {
        t.instance_errors += 1;
    } else {
        t.intact += 1;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_give_typed_errors_or_correct_data() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let seed = support::seed_from_env("DURABLE_CORRUPT_SEED");
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    build_store(&pristine).await;
    let kinds: Vec<&str> = files(&pristine).iter().map(|(k, _)| *k).collect();
    for kind in ["conf", "db", "snapshot", "blob", "lock"] {
        assert!(
            kinds.contains(&kind),
            "the valid store has no {kind} file: {kinds:?}"
        );
    }

    // The undamaged copy must be fully intact.
    let tally = Mutex::new(Tally::default());
    let copy = tmp.path().join("undamaged");
    support::copy_store(&pristine, &copy);
    check_copy(&copy, &tally).unwrap();
    assert_eq!(
        tally.lock().unwrap().intact,
        1,
        "the undamaged store is not intact"
    );

    let mut cases = Vec::new();
    for (kind, file) in files(&pristine) {
        let len = std::fs::metadata(pristine.join(&file)).unwrap().len();
        let used = used_len(&pristine.join(&file));
        for damage in damages(kind, len, used, &mut rng) {
            cases.push((kind, file.clone(), damage, rng.next_u64()));
        }
    }
    let started = Instant::now();
    let queue = Mutex::new(cases.into_iter().enumerate());
    let failures = Mutex::new(Vec::new());
    // After a hang the remaining cases are not run: each could cost a hang
    // guard, and the hang is the failure to look at.
    let hung = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    if hung.load(Ordering::SeqCst) {
                        break;
                    }
                    let next = queue.lock().unwrap().next();
                    let Some((i, (kind, file, damage, case_seed))) = next else {
                        break;
                    };
                    let copy = tmp.path().join(format!("case-{i}"));
                    support::copy_store(&pristine, &copy);
                    apply_damage(&copy.join(&file), &damage, &mut Rng::new(case_seed));
                    let verbose = std::env::var_os("DURABLE_CORRUPT_VERBOSE").is_some();
                    let before = verbose.then(|| format!("{:?}", tally.lock().unwrap()));
                    let result = check_copy(&copy, &tally);
                    if let Some(before) = before {
                        eprintln!(
                            "{kind} {} {damage:?}: {before} -> {:?}",
                            file.display(),
                            tally.lock().unwrap()
                        );
                    }
                    if result
                        .as_ref()
                        .is_err_and(|e| e.starts_with("HANG") || e.starts_with("hang guard"))
                    {
                        hung.store(true, Ordering::SeqCst);
                    }
                    match result {
                        Ok(()) => std::fs::remove_dir_all(&copy).unwrap(),
                        Err(e) => failures.lock().unwrap().push(format!(
                            "{kind} file {} with {damage:?} (copy kept at {}): {e}",
                            file.display(),
                            copy.display()
                        )),
                    }
                }
            });
        }
    });
    let t = tally.into_inner().unwrap();
    eprintln!(
        "corrupt stores (seed {seed}): {} damaged copies in {:.1?}: {} refused with a typed error, {} intact, \
         {} with typed errors for some instances, {} forgot some instances (log cut at the damage)",
        t.cases - 1,
        started.elapsed(),
        t.open_errors,
        t.intact - 1,
        t.instance_errors,
        t.forgot
    );
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        let kept = support::keep(tmp);
        panic!(
            "seed {seed} (replay: DURABLE_CORRUPT_SEED={seed}), kept {}:\n{}",
            kept.display(),
            support::violations(&failures)
        );
    }
}

/// An envelope (format version 1) whose first length prefix claims `len`
/// bytes (bincode varint: 0xFD then a little-endian u64).
fn claims(len: u64) -> Vec<u8> {
    let mut bytes = vec![1, 0xFD];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(b"only a few bytes follow");
    bytes
}

/// The key of checkpoint (id, name, occurrence), as records.rs lays it out.
fn checkpoint_key(id: &str, name: &str, occurrence: u32) -> Vec<u8> {
    let mut key = (id.len() as u32).to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(&(name.len() as u32).to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key.extend_from_slice(&occurrence.to_be_bytes());
    key
}

#[tokio::test]
async fn huge_length_prefixes_are_typed_errors_without_huge_allocations() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let engine = Engine::builder()
            .path(&path)
            .register(pipeline)
            .open()
            .await
            .unwrap();
        assert_eq!(
            engine.run(pipeline, "victim", 9).await.unwrap(),
            Ok(expected(9))
        );
        engine.shutdown().await;
    }
    {
        let store = SledStore::open(&path).unwrap();
        let mut batch = Batch::new();
        // An unfinished instance whose record claims 2^62 bytes.
        batch.put(Tree::Instances, b"hostile".to_vec(), claims(1 << 62));
        batch.put(
            Tree::Active,
            b"hostile".to_vec(),
            0u32.to_be_bytes().to_vec(),
        );
        // A finished step whose checkpoint claims 60 MiB (under the decode
        // limit) but holds a few bytes, and one that claims 2^40.
        batch.put(
            Tree::Checkpoints,
            checkpoint_key("victim", "a", 0),
            claims(60 << 20),
        );
        batch.put(
            Tree::Checkpoints,
            checkpoint_key("victim", "b", 0),
            claims(1 << 40),
        );
        // And a finished instance whose record claims u64::MAX.
        batch.put(Tree::Instances, b"hostile-2".to_vec(), claims(u64::MAX));
        store.apply(&[batch]).unwrap();
    }
    LARGEST.store(0, Ordering::SeqCst);
    let engine = Engine::builder()
        .path(&path)
        .register(pipeline)
        .open()
        .await
        .unwrap();
    let skipped = &engine.recovery().skipped;
    assert!(
        skipped
            .iter()
            .any(|(id, reason)| id == "hostile" && reason.contains("decode")),
        "{skipped:?}"
    );
    for id in ["hostile", "hostile-2"] {
        match engine.status(id).await {
            Err(Error::Store(StoreError::Decode { what, .. })) => {
                assert!(what.contains(id), "{what}")
            }
            other => panic!("{id}: expected a decode error, got {other:?}"),
        }
    }
    // The victim's stored output is intact; its history does not decode.
    assert_eq!(
        engine.run(pipeline, "victim", 9).await.unwrap(),
        Ok(expected(9))
    );
    assert!(matches!(
        engine.history("victim").await,
        Err(Error::Store(StoreError::Decode { .. }))
    ));
    // Never gigabytes: at most the codec's 64 MiB decode limit.
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(
        largest <= 64 << 20,
        "decoding hostile records allocated {largest} bytes at once"
    );
    assert!(matches!(
        engine.status("victim").await,
        Ok(Status::Completed { .. })
    ));
    engine.shutdown().await;
}
