//! A full disk, for real: a small ext4 file system on a loop device, nearly filled.
//!
//! - Appends keep working while the prepared segment has room (its blocks are already
//!   allocated); the roll that needs a new segment file fails with a clear error naming
//!   the file (`No space left on device`), never a panic or a hang, and the log is not
//!   poisoned: everything appended before still syncs.
//! - The log reopens on the still-full disk with every acknowledged record.
//! - Once space is freed, appends go through again (the preparation is retried).
//! - A writer killed while the disk is full leaves nothing that blocks the next open.
//! - Compression on a full disk fails, keeps every raw segment readable and leaves no
//!   file behind; once space is freed, the next open compresses them.
//!
//! Needs root and `mount`; elsewhere the tests say so and return, unless
//! `AOF2_REQUIRE_LOOP=1` (CI sets it), which makes that a failure.

mod common;

use bop_rs::aof2::{Aof, AofError, RecordId};
use common::*;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A mounted loop file system, unmounted on drop.
struct LoopFs {
    mnt: tempfile::TempDir,
    _img_dir: tempfile::TempDir,
}

impl LoopFs {
    fn path(&self) -> &Path {
        self.mnt.path()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mnt.path())
            .status();
    }
}

fn loop_fs(test: &str, mib: u64) -> Option<LoopFs> {
    let required = std::env::var("AOF2_REQUIRE_LOOP").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(
            !required,
            "{test}: a loop file system is required here: {why}"
        );
        eprintln!("{test}: {why}; nothing to check");
        None
    };
    if !is_root() {
        return skip("not root: cannot mount a loop file system".into());
    }
    let img_dir = tempfile::tempdir().unwrap();
    let img = img_dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .output();
    match mkfs {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return skip(format!(
                "mkfs.ext4 failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
        Err(e) => return skip(format!("mkfs.ext4 not runnable: {e}")),
    }
    let mnt = tempfile::tempdir().unwrap();
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(mnt.path())
        .output()
        .unwrap();
    if !out.status.success() {
        return skip(format!(
            "mount -o loop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Some(LoopFs {
        mnt,
        _img_dir: img_dir,
    })
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs is plain old data; all-zero is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// Fills the file system with an allocated file until `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let f = std::fs::File::create(&path).unwrap();
    let len = free_bytes(dir).saturating_sub(leave) as i64;
    // SAFETY: plain syscall on an fd we own.
    assert_eq!(unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) }, 0);
    f.sync_all().unwrap();
    path
}

fn cfg_on(root: &Path) -> bop_rs::aof2::AofConfig {
    let mut c = small_cfg(root);
    c.flush.flush_interval_ms = 0;
    c
}

/// Appends until an append fails; flushes every few records. Returns the acknowledged
/// (durable) records and the error.
fn append_until_full(aof: &Aof) -> (Vec<(RecordId, Vec<u8>)>, AofError) {
    let mut acked = Vec::new();
    let mut pending = Vec::new();
    for seq in 0.. {
        let p = payload(42, seq);
        match aof.append_record(&p) {
            Ok(rid) => pending.push((rid, p)),
            Err(e) => {
                // What was appended before the error still syncs.
                if let Some((rid, _)) = pending.last() {
                    aof.flush_until(*rid)
                        .expect("records before a failed roll sync");
                }
                acked.append(&mut pending);
                return (acked, e);
            }
        }
        if seq % 8 == 7 {
            aof.flush_until(pending.last().unwrap().0).unwrap();
            acked.append(&mut pending);
        }
    }
    unreachable!()
}

#[test]
fn a_full_disk_fails_the_roll_clearly_keeps_every_acked_record_and_recovers() {
    let Some(lo) = loop_fs("a_full_disk_fails_the_roll_clearly", 24) else {
        return;
    };
    let root = lo.path().join("log");
    let m = manager();
    let aof = open(&m, cfg_on(&root));
    let filler = fill(lo.path(), 300 << 10);

    let ((acked, err), caller_commits, full) =
        within(Duration::from_secs(60), "appending until full", move || {
            let r = append_until_full(&aof);
            let commits = aof.flush_metrics().caller_commits;
            (r, commits, aof)
        });
    drop(full); // closed before the reopen below
                // The default commit mode: the appending thread itself wrote and synced.
    assert!(caller_commits > 0, "no caller commit");
    let msg = err.to_string();
    assert!(
        matches!(err, AofError::Io { .. })
            && msg.contains("No space left on device")
            && msg.contains(root.to_str().unwrap()),
        "a clear error naming the file: {msg}"
    );
    assert!(
        acked.len() > 10,
        "appends went through until the disk filled"
    );

    // The log reopens on the still-full disk with every acknowledged record.
    let aof = within(Duration::from_secs(30), "reopening on a full disk", {
        let cfg = cfg_on(&root);
        let h = m.handle();
        move || Aof::new(h, cfg)
    })
    .expect("the log reopens on a full disk");
    for (rid, p) in &acked {
        assert_eq!(&read_back(&aof, *rid), p, "acknowledged record {rid}");
    }
    let e = aof.append_record(&[1u8; 60_000]).err();
    assert!(
        e.is_some(),
        "still full: a record needing a new segment fails"
    );

    // Space is freed: appends go through again (the preparation is retried).
    std::fs::remove_file(&filler).unwrap();
    let start = Instant::now();
    let rid = loop {
        match aof.append_record(b"after the disk was freed") {
            Ok(rid) => break rid,
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                assert!(e.to_string().contains("No space left"), "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("appends did not resume after space was freed: {e}"),
        }
    };
    aof.flush_until(rid).unwrap();
    assert_eq!(read_back(&aof, rid), b"after the disk was freed");
    assert!(aof.flush_metrics().prepare_failures >= 1);
}

/// Child: fills the disk, reporting each acknowledged record, then waits to be killed.
#[test]
fn child_full_disk_writer() {
    let Ok(dir) = std::env::var("AOF2_FULL_DIR") else {
        return;
    };
    let m = manager();
    let aof = open(&m, cfg_on(Path::new(&dir)));
    fill(Path::new(&dir).parent().unwrap(), 200 << 10);
    let mut seq = 0u64;
    loop {
        let rid = match aof.append_record(&payload(7, seq)) {
            Ok(r) => r,
            Err(_) => {
                println!("FULL");
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
        };
        aof.flush_until(rid).unwrap();
        println!("ACK {seq} {}", rid.as_u64());
        seq += 1;
    }
}

#[test]
fn a_writer_killed_on_a_full_disk_leaves_nothing_that_blocks_the_next_open() {
    let Some(lo) = loop_fs("a_writer_killed_on_a_full_disk", 24) else {
        return;
    };
    let root = lo.path().join("log");
    let mut child = child("child_full_disk_writer")
        .env("AOF2_FULL_DIR", &root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the child filled the disk in time");
        if l.contains("FULL") {
            break;
        }
        if let Some(rest) = l.split("ACK ").nth(1) {
            let mut it = rest.split_whitespace();
            let seq: u64 = it.next().unwrap().parse().unwrap();
            let rid: u64 = it.next().unwrap().parse().unwrap();
            acked.push((seq, RecordId::from_u64(rid)));
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!acked.is_empty());

    let m = manager();
    let aof = within(
        Duration::from_secs(30),
        "reopening after a kill on a full disk",
        {
            let cfg = cfg_on(&root);
            let h = m.handle();
            move || Aof::new(h, cfg)
        },
    )
    .expect("the log reopens");
    for (seq, rid) in &acked {
        assert_eq!(
            read_back(&aof, *rid),
            payload(7, *seq),
            "acknowledged record {rid}"
        );
    }
}

/// Takes every block left, the root-reserved ones included (ENOSPC for anyone).
fn fill_all(dir: &Path) -> PathBuf {
    let path = dir.join("filler-all");
    let f = std::fs::File::create(&path).unwrap();
    let mut at = 0i64;
    for step in [1i64 << 20, 64 << 10, 4 << 10] {
        // SAFETY: plain syscall on an fd we own.
        while unsafe { libc::posix_fallocate(f.as_raw_fd(), at, step) } == 0 {
            at += step;
        }
    }
    f.sync_all().unwrap();
    path
}

#[test]
fn a_full_disk_while_compressing_keeps_the_raw_segments_and_compresses_once_freed() {
    let Some(lo) = loop_fs("a_full_disk_while_compressing", 24) else {
        return;
    };
    let root = lo.path().join("log");
    let m = manager();
    // Sealed segments of barely compressible records, written without compression.
    let aof = open(&m, cfg_on(&root));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut recs = Vec::new();
    for _ in 0..400 {
        let p: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        recs.push((aof.append_record(&p).unwrap(), p));
    }
    aof.flush().unwrap();
    aof.close().unwrap();
    drop(aof);
    let fillers = [fill(lo.path(), 0), fill_all(lo.path())];
    // Reopened with compression on a full disk: every swap fails, nothing is lost.
    let mut cfg = cfg_on(&root);
    cfg.compression = bop_rs::aof2::config::Compression::Zstd;
    let aof = open(&m, cfg.clone());
    let start = Instant::now();
    while aof.flush_metrics().compression_failures == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no swap tried");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mm = aof.flush_metrics();
    assert_eq!(mm.segments_compressed, 0, "{mm:?}");
    assert!(mm.compression_backlog_segments >= 4, "{mm:?}");
    let names: Vec<String> = std::fs::read_dir(root.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".zst")), "{names:?}");
    for (rid, p) in &recs {
        assert_eq!(&read_back(&aof, *rid), p, "{rid}");
    }
    aof.close().unwrap();
    drop(aof);
    // Space again: the next open compresses every sealed segment.
    for f in fillers {
        std::fs::remove_file(f).unwrap();
    }
    let aof = open(&m, cfg);
    let start = Instant::now();
    while aof.flush_metrics().compression_backlog_segments > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not compressed once freed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        aof.catalog_snapshot()
            .iter()
            .filter(|s| s.compressed)
            .count()
            >= 4
    );
    for (rid, p) in &recs {
        assert_eq!(&read_back(&aof, *rid), p, "{rid}");
    }
}
