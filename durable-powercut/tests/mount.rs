//! The file system through the kernel: what is synced survives a cut, what
//! is not is lost, and triggers freeze it at the chosen operation. Skipped
//! (with a message) where FUSE cannot be mounted.
#![cfg(target_os = "linux")]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use durable_powercut::{Action, CutMode, OpKind, PowerFs, Trigger, probe};

fn usable(dir: &Path) -> bool {
    match probe(dir) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: FUSE is not usable here: {why}");
            false
        }
    }
}

#[test]
fn a_cut_keeps_what_was_synced_and_loses_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    if !usable(tmp.path()) {
        return;
    }
    let point = tmp.path().join("mnt");
    fs::create_dir(&point).unwrap();
    let fs_ = PowerFs::new();
    let mount = fs_.mount(&point).unwrap();
    let synced = point.join("synced");
    let mut f = File::create(&synced).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_all().unwrap();
    File::open(&point).unwrap().sync_all().unwrap();
    f.write_all(b" lost").unwrap();
    drop(f);
    fs::write(point.join("unsynced"), b"lost").unwrap();
    assert_eq!(fs::read(&synced).unwrap(), b"kept lost");
    mount.unmount().unwrap();
    fs_.cut(CutMode::LoseAll, 1);
    let mount = fs_.mount(&point).unwrap();
    assert_eq!(fs::read(&synced).unwrap(), b"kept");
    assert!(!point.join("unsynced").exists());
    mount.unmount().unwrap();
}

#[test]
fn a_trigger_freezes_at_its_operation() {
    let tmp = tempfile::tempdir().unwrap();
    if !usable(tmp.path()) {
        return;
    }
    let point = tmp.path().join("mnt");
    fs::create_dir(&point).unwrap();
    let fs_ = PowerFs::new();
    let mount = fs_.mount(&point).unwrap();
    fs::write(point.join("a.tmp"), b"snapshot").unwrap();
    File::open(point.join("a.tmp")).unwrap().sync_all().unwrap();
    fs_.arm(Trigger {
        kind: OpKind::Rename,
        pattern: "a*".into(),
        nth: 1,
        action: Action::CutAfter,
    });
    fs::rename(point.join("a.tmp"), point.join("a")).unwrap();
    assert!(fs_.wait_fired(Duration::from_secs(10)));
    assert!(fs_.frozen());
    let fired = fs_.fired();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].path, "a.tmp");
    // Every request now waits; once powered off they fail.
    let point2 = point.clone();
    let waiting = std::thread::spawn(move || {
        OpenOptions::new()
            .append(true)
            .open(point2.join("a"))
            .and_then(|mut f| f.write_all(b"never"))
    });
    std::thread::sleep(Duration::from_millis(50));
    fs_.power_off();
    assert!(waiting.join().unwrap().is_err());
    mount.unmount().unwrap();
    // The rename was not made durable: a cut that keeps the metadata keeps
    // it, one that loses everything does not.
    fs_.cut(CutMode::KeepMetadata, 1);
    let mount = fs_.mount(&point).unwrap();
    assert_eq!(fs::read(point.join("a")).unwrap(), b"snapshot");
    mount.unmount().unwrap();
}

#[test]
fn a_failed_fsync_loses_the_writes() {
    let tmp = tempfile::tempdir().unwrap();
    if !usable(tmp.path()) {
        return;
    }
    let point = tmp.path().join("mnt");
    fs::create_dir(&point).unwrap();
    let fs_ = PowerFs::new();
    let mount = fs_.mount(&point).unwrap();
    let mut f = File::create(point.join("f")).unwrap();
    f.sync_all().unwrap();
    fs_.arm(Trigger {
        kind: OpKind::Fsync,
        pattern: "f".into(),
        nth: 1,
        action: Action::Fail,
    });
    f.write_all(b"data").unwrap();
    assert!(f.sync_data().is_err());
    f.sync_data().unwrap();
    drop(f);
    mount.unmount().unwrap();
    fs_.cut(CutMode::Random, 3);
    let mount = fs_.mount(&point).unwrap();
    assert_eq!(fs::read(point.join("f")).unwrap(), b"");
    mount.unmount().unwrap();
}
