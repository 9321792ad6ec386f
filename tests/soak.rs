//! Load: hundreds of logs across the shards, writer threads and follower threads mixed,
//! for a bounded time. Checks that anonymous memory stays within what the back-pressure
//! settings allow, that no file descriptor leaks once the logs are closed, and that every
//! record appended comes back after a reopen.
//!
//! `AOF2_SOAK_SECS` (default 4) and `AOF2_SOAK_LOGS` (default 200) size it;
//! `scripts/soak.sh` runs it longer. Also here: many logs against a small file-descriptor
//! limit, and a file system without O_DIRECT (ramfs; tmpfs before Linux 6.6).

mod common;

use bop_rs::aof2::config::SegmentId;
use bop_rs::aof2::{Aof, AofConfig, RecordId};
use common::*;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

const MAX_UNFLUSHED: u64 = 256 * 1024;

fn soak_cfg(root: &Path) -> AofConfig {
    let mut c = small_cfg(root);
    c.flush.max_unflushed_bytes = MAX_UNFLUSHED;
    c.flush.flush_watermark_bytes = 128 * 1024;
    c.flush.flush_interval_ms = 5;
    c
}

/// Record `seq` of log `log`: both numbers first.
fn rec(log: u64, seq: u64) -> Vec<u8> {
    let mut p = payload(log, seq);
    p.truncate(600);
    p.splice(0..0, log.to_le_bytes().into_iter().chain(seq.to_le_bytes()));
    p
}

/// Runs in a child process of its own, so descriptor and memory counts are this test's.
#[test]
fn hundreds_of_logs_with_writers_and_followers_stay_bounded_and_lose_nothing() {
    let (stdout, _) = run_child_ok(child("child_soak").env("AOF2_SOAK_CHILD", "1"), "SOAK OK");
    println!(
        "{}",
        stdout.lines().find(|l| l.contains("soak:")).unwrap_or("")
    );
}

#[test]
fn child_soak() {
    if std::env::var("AOF2_SOAK_CHILD").is_err() {
        return;
    }
    let secs = env_or("AOF2_SOAK_SECS", 4);
    let n = env_or("AOF2_SOAK_LOGS", 200) as usize;
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let fds_before = open_fds();
    let anon_before = status_kib("RssAnon:");
    let logs: Arc<Vec<Aof>> = Arc::new(
        (0..n)
            .map(|i| open(&m, soak_cfg(&d.path().join(format!("log{i}")))))
            .collect(),
    );
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    const WRITERS: usize = 6;
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (logs, counts, stop) = (logs.clone(), counts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mine: Vec<usize> = (t..logs.len()).step_by(WRITERS).collect();
                let mut k = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let i = mine[k % mine.len()];
                    k += 1;
                    let aof = &logs[i];
                    let mut last = None;
                    for _ in 0..1 + k % 5 {
                        let seq = counts[i].load(Ordering::Relaxed);
                        last = Some(aof.append_record(&rec(i as u64, seq)).unwrap());
                        counts[i].store(seq + 1, Ordering::Relaxed);
                    }
                    match k % 23 {
                        0 => aof.flush_until(last.unwrap()).unwrap(),
                        7 => {
                            aof.seal_active().unwrap();
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    // Followers read each sealed segment of their logs once it is sealed.
    let read = Arc::new(AtomicU64::new(0));
    let followers: Vec<_> = (0..2)
        .map(|t| {
            let (logs, stop, read) = (logs.clone(), stop.clone(), read.clone());
            std::thread::spawn(move || {
                let mine: Vec<usize> = (t..logs.len()).step_by(4).collect();
                let mut next_seg = vec![0u64; logs.len()];
                let mut next_seq = vec![0u64; logs.len()];
                while !stop.load(Ordering::Relaxed) {
                    for &i in &mine {
                        let st = logs[i].tail_state();
                        let Some(last) = st.last_sealed else { continue };
                        while next_seg[i] <= last.as_u64() {
                            let r = logs[i].open_reader(SegmentId::new(next_seg[i]));
                            next_seg[i] += 1;
                            let Ok(r) = r else { continue }; // ids may skip
                            let mut c = bop_rs::aof2::reader::SegmentCursor::new(r);
                            while let Some(x) = c.next().unwrap() {
                                let p = x.payload();
                                let log = u64::from_le_bytes(p[..8].try_into().unwrap());
                                let seq = u64::from_le_bytes(p[8..16].try_into().unwrap());
                                assert_eq!((log, seq), (i as u64, next_seq[i]), "in order");
                                assert_eq!(p, rec(log, seq));
                                next_seq[i] += 1;
                                read.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut peak_anon = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        peak_anon = peak_anon.max(status_kib("RssAnon:"));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in writers.into_iter().chain(followers) {
        t.join().unwrap();
    }
    let total: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    // Back-pressure bounds each log's unflushed bytes; buffers are 64 KiB here (segments
    // are small) with at most a few spare per log; threads and the allocator add a bit.
    let per_log_kib = (MAX_UNFLUSHED + 6 * 64 * 1024) / 1024;
    let bound = n as u64 * per_log_kib + 128 * 1024;
    let grew = peak_anon.saturating_sub(anon_before);
    let nets: u64 = m.shard_stats().iter().map(|s| s.safety_net_wakeups).sum();
    println!(
        "soak: {n} logs, {secs} s: {total} records appended, {} read by followers; anonymous memory grew {grew} KiB (bound {bound} KiB); {nets} sleeps ended by the glommio safety net",
        read.load(Ordering::Relaxed)
    );
    assert!(total > n as u64, "the writers made progress");
    assert!(
        read.load(Ordering::Relaxed) > 0,
        "the followers read sealed segments"
    );
    assert!(
        grew <= bound,
        "memory grew {grew} KiB, over the bound of {bound} KiB"
    );

    // Close every log: no descriptor stays open.
    let logs = Arc::try_unwrap(logs).expect("threads are done");
    drop(logs);
    let fds_after = open_fds();
    assert_eq!(fds_after, fds_before, "file descriptors leaked");

    // Every record is back after a reopen, in order.
    for i in 0..n {
        let aof = open(&m, soak_cfg(&d.path().join(format!("log{i}"))));
        let want = counts[i].load(Ordering::Relaxed);
        let got: u64 = aof.catalog_snapshot().iter().map(|s| s.record_count).sum();
        assert_eq!(got, want, "log {i}: records appended vs found");
    }
    println!("SOAK OK");
}

/// Child: a small descriptor limit, and logs opened until it is reached.
#[test]
fn child_fd_limit() {
    let Ok(dir) = std::env::var("AOF2_FD_DIR") else {
        return;
    };
    let limit = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: plain syscall with a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let m = manager();
    let mut logs = Vec::new();
    let mut failure = None;
    for i in 0..200 {
        let aof = match Aof::new(
            m.handle(),
            small_cfg(&Path::new(&dir).join(format!("l{i}"))),
        ) {
            Ok(a) => a,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        };
        // The limit may bite when the log opens or when it next needs a file.
        match aof
            .append_record(&rec(i, 0))
            .and_then(|r| aof.flush_until(r).map(|_| r))
        {
            Ok(_) => logs.push(aof),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let msg = failure.expect("the descriptor limit was reached");
    assert!(
        msg.contains("Too many open files") && msg.contains(&dir),
        "a clear error naming a path: {msg}"
    );
    // The logs already open keep working, and closing some makes room again.
    for (i, aof) in logs.iter().enumerate() {
        let r = aof.append_record(&rec(i as u64, 1)).unwrap();
        aof.flush_until(r).unwrap();
    }
    logs.truncate(logs.len() / 2);
    let aof = Aof::new(m.handle(), small_cfg(&Path::new(&dir).join("after")))
        .expect("closing logs frees descriptors");
    let r = aof.append_record(b"room again").unwrap();
    aof.flush_until(r).unwrap();
    println!("CHILD OK {} logs open at the limit: {msg}", logs.len() * 2);
}

#[test]
fn reaching_the_descriptor_limit_is_a_clear_error_and_open_logs_keep_working() {
    let d = tempfile::tempdir().unwrap();
    run_child_ok(
        child("child_fd_limit").env("AOF2_FD_DIR", d.path()),
        "CHILD OK",
    );
}

/// Writes, reopens and reads back a log in `dir`; returns its `aof_direct_io` gauge.
fn round_trip(dir: &Path) -> u64 {
    let m = manager();
    let aof = open(&m, small_cfg(dir));
    let mut rids: Vec<RecordId> = Vec::new();
    for i in 0..300u64 {
        rids.push(aof.append_record(&rec(1, i)).unwrap());
    }
    aof.flush_until(*rids.last().unwrap()).unwrap();
    assert!(aof.flush_metrics().segments_sealed >= 1, "rolled");
    let direct = aof.flush_metrics().direct_io;
    drop(aof);
    let aof = open(&m, small_cfg(dir));
    for (i, rid) in rids.iter().enumerate() {
        assert_eq!(read_back(&aof, *rid), rec(1, i as u64));
    }
    direct
}

/// True when the kernel lets `dir`'s file system open a file with O_DIRECT.
fn takes_o_direct(dir: &Path) -> bool {
    let p = dir.join("probe");
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p);
    let _ = std::fs::remove_file(&p);
    r.is_ok()
}

/// A file system that refuses O_DIRECT (ramfs; tmpfs too before Linux 6.6): the
/// engine falls back to buffered writes, which `fdatasync` makes as durable, says so in
/// the `aof_direct_io` gauge, and everything works the same. ext4 takes O_DIRECT.
#[test]
fn a_file_system_without_o_direct_falls_back_to_buffered_writes() {
    let ext4 = tempfile::tempdir().unwrap();
    assert_eq!(round_trip(ext4.path()), 1, "O_DIRECT on the test disk");
    // tmpfs: whatever this kernel allows, the gauge says it.
    if Path::new("/dev/shm").is_dir() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let want = u64::from(takes_o_direct(shm.path()));
        assert_eq!(round_trip(shm.path()), want, "tmpfs");
    }
    // ramfs refuses O_DIRECT on every kernel (mounting one needs root).
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("AOF2_REQUIRE_LOOP").as_deref() != Ok("1"),
            "mounting a ramfs needs root (AOF2_REQUIRE_LOOP=1 requires it)"
        );
        eprintln!("cannot mount a ramfs here (not root?); the refusal is not checked");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    assert!(!takes_o_direct(dir.path()), "ramfs refuses O_DIRECT");
    assert_eq!(round_trip(dir.path()), 0, "buffered on ramfs");
}
