//! A log holds a service's data: the directories and files the engine creates are
//! owner-only by default (0700 / 0600), whatever the umask; `AofConfig::file_mode`
//! chooses other bits; the read-only tools never change a mode. Checked in a child
//! process, so its permissive umask (000) touches no other test.

#[path = "../../tests/common/mod.rs"]
mod common;

use bop_rs::aof2::{Aof, AofConfig, AofError};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every directory from `top` down and every file in the log, with its mode.
fn modes(top: &Path, root: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut d = root.to_path_buf();
    while d.starts_with(top) && d != top {
        out.push((d.display().to_string(), mode_of(&d)));
        d = d.parent().unwrap().to_path_buf();
    }
    for dir in [root.to_path_buf(), root.join("segments")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            out.push((p.display().to_string(), mode_of(&p)));
        }
    }
    out
}

/// Writes enough to roll, seal and leave prepared files, then closes.
fn write_some(root: &Path, file_mode: Option<u32>) {
    let m = manager();
    let mut c = small_cfg(root);
    if let Some(mode) = file_mode {
        c.file_mode = mode;
    }
    let aof = open(&m, c);
    let mut last = None;
    for i in 0..200u64 {
        last = Some(aof.append_record(&payload(2, i)).unwrap());
    }
    aof.flush_until(last.unwrap()).unwrap();
    aof.seal_active().unwrap();
    aof.append_record(b"one more").unwrap();
    aof.flush().unwrap();
}

fn check(top: &Path, root: &Path, dir_mode: u32, file_mode: u32) {
    let all = modes(top, root);
    let files = all.iter().filter(|(p, _)| !Path::new(p).is_dir()).count();
    assert!(files >= 4, "segments, prepared files and the lock: {all:?}");
    for (p, m) in &all {
        let want = if Path::new(p).is_dir() {
            dir_mode
        } else {
            file_mode
        };
        assert_eq!(*m, want, "{p} has mode {m:o}, want {want:o}: {all:?}");
    }
}

/// Child: umask 000, then logs with the default and a chosen mode.
#[test]
fn child_permissive_umask() {
    let Ok(dir) = std::env::var("AOF2_CHILD_MODES_DIR") else {
        return;
    };
    // SAFETY: plain syscall; this child process runs this test alone.
    unsafe { libc::umask(0) };
    let top = Path::new(&dir);

    // Default: owner only, parents created on the way included.
    let root = top.join("new/parents/log");
    write_some(&root, None);
    check(top, &root, 0o700, 0o600);
    // Reopening (recovery, prepared files reused) and the read-only tools keep them.
    write_some(&root, None);
    for tool in ["verify", "stat", "dump"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_aof2"))
            .args([tool, root.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool}");
    }
    check(top, &root, 0o700, 0o600);

    // A chosen mode: group may read; directories get search where read is set.
    let shared = top.join("shared");
    write_some(&shared, Some(0o640));
    check(top, &shared, 0o750, 0o640);

    // Modes that would lock the engine out of its own files, or are not permission
    // bits, are refused before anything is created.
    let m = manager();
    for bad in [0o400, 0o200, 0o4600, 0o10600] {
        let mut c = AofConfig::default();
        c.root_dir = top.join(format!("bad{bad:o}"));
        c.file_mode = bad;
        let e = Aof::new(m.handle(), c).expect_err("refused");
        assert!(
            matches!(e, AofError::InvalidConfig(ref s) if s.contains("file_mode")),
            "{e}"
        );
        assert!(!top.join(format!("bad{bad:o}")).exists());
    }
    println!("CHILD OK");
}

#[test]
fn files_and_directories_are_owner_only_by_default_even_under_umask_000() {
    let d = tempfile::tempdir().unwrap();
    run_child_ok(
        child("child_permissive_umask").env("AOF2_CHILD_MODES_DIR", d.path()),
        "CHILD OK",
    );
}
