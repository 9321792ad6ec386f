//! Which I/O backend runs, and proof that the io_uring one really is io_uring.
//!
//! - Where `io_uring_setup` is refused (a seccomp filter, as Docker's default profile
//!   does), `Auto` falls back to the portable backend with a warning and the
//!   `aof_io_uring_fallback` metric, and `Uring` (strict) is a clear startup error.
//! - Where memlock refuses registered buffers, the ring works without them.
//! - With io_uring, the durable write path makes no `pwrite*`/`fdatasync` system calls
//!   (counted with `strace -f -c`), and an idle manager's shards use no CPU and never
//!   wake.
//!
//! Tests that need io_uring, strace or root say so and return where those are missing,
//! unless `AOF2_REQUIRE_URING=1` (set in CI), which turns a missing one into a failure.

mod common;

use aof2_shards::config::{CommitMode, IoBackend};
use aof2_shards::exec::uring::RingSetup;
use aof2_shards::log_handle::LogHandle;
use aof2_shards::manager::ShardSet;
use aof2_shards::shard::Running;
use bop_rs::aof2::{Aof, AofError, AofManager, AofManagerConfig, FlushMetricsExporter};
use common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn required() -> bool {
    std::env::var("AOF2_REQUIRE_URING").is_ok_and(|v| v == "1")
}

/// True when this machine can set up a ring; otherwise says why the test stops.
fn uring_available(test: &str) -> bool {
    let mut cfg = AofManagerConfig::default();
    cfg.backend = IoBackend::Uring;
    cfg.shards = 1;
    match AofManager::with_config(cfg) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                !required(),
                "{test}: io_uring is required here but unavailable: {e}"
            );
            eprintln!("{test}: io_uring unavailable here ({e}); nothing to check");
            false
        }
    }
}

/// Appends, flushes and reads back a few records: the log works.
fn exercise(aof: &Aof) {
    let mut rids = Vec::new();
    for i in 0..50u64 {
        rids.push(aof.append_record(&payload(9, i)).unwrap());
    }
    aof.flush_until(*rids.last().unwrap()).unwrap();
    for (i, rid) in rids.iter().enumerate() {
        assert_eq!(read_back(aof, *rid), payload(9, i as u64));
    }
}

/// Installs a seccomp filter that makes `io_uring_setup` fail with EPERM for this
/// thread and every thread it starts later, as container runtimes do.
fn block_io_uring_setup() {
    const NR_IO_URING_SETUP: u32 = 425; // the same on x86_64 and aarch64
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == io_uring_setup: next, else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: NR_IO_URING_SETUP,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | libc::EPERM as u32, // SECCOMP_RET_ERRNO | EPERM
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000, // SECCOMP_RET_ALLOW
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls; `prog` points to a valid filter for the call's duration.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ),
            0,
            "seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Child: io_uring_setup blocked.
#[test]
fn child_without_io_uring() {
    let Ok(dir) = std::env::var("AOF2_CHILD_DIR") else {
        return; // only meaningful as a child of the test below
    };
    block_io_uring_setup();
    init_log();
    // Shards in glommio need io_uring: asked for, a clear error, never glommio's
    // panic or exit. (The parent runs this child on the thread executor.)
    #[cfg(feature = "glommio")]
    {
        let mut g = AofManagerConfig::default();
        g.executor = bop_rs::aof2::config::ShardExecutor::Glommio;
        let e = AofManager::with_config(g).expect_err("glommio needs io_uring");
        let msg = e.to_string();
        assert!(matches!(e, AofError::Startup(_)), "{msg}");
        assert!(
            msg.contains("glommio") && msg.contains("io_uring_setup"),
            "{msg}"
        );
    }
    // Strict: a clear error naming io_uring and the way out.
    let mut strict = AofManagerConfig::default();
    strict.backend = IoBackend::Uring;
    let e = AofManager::with_config(strict).expect_err("strict must fail");
    let msg = e.to_string();
    assert!(matches!(e, AofError::Startup(_)), "{msg}");
    assert!(msg.contains("io_uring") && msg.contains("Auto"), "{msg}");
    // Auto: the portable backend, said so, and the log works.
    let m = AofManager::with_config(AofManagerConfig::default()).expect("Auto falls back");
    assert_eq!(m.io_backend(), "sync");
    assert!(m.io_uring_fallback());
    let aof = open(&m, small_cfg(Path::new(&dir)));
    exercise(&aof);
    let fallback = FlushMetricsExporter::new(aof.flush_metrics())
        .samples()
        .into_iter()
        .find(|s| s.name == "aof_io_uring_fallback")
        .expect("the fallback metric is exported");
    assert_eq!(fallback.value, 1);
    println!("CHILD OK");
}

#[test]
fn blocked_io_uring_falls_back_with_a_metric_and_strict_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let (_, stderr) = run_child_ok(
        child("child_without_io_uring")
            .env("AOF2_CHILD_DIR", d.path())
            .env("AOF2_TEST_LOG", "info")
            .env_remove("AOF2_BACKEND")
            .env_remove("AOF2_EXECUTOR"),
        "CHILD OK",
    );
    assert!(
        stderr.contains("io_uring is unavailable") && stderr.contains("WARN"),
        "the fallback is logged as a warning:\n{stderr}"
    );
}

#[test]
fn a_bad_aof2_backend_value_is_a_clear_error() {
    run_child_ok(
        child("child_bad_backend_env")
            .env("AOF2_BACKEND", "fast")
            .env("AOF2_CHILD_BAD_ENV", "1"),
        "CHILD OK",
    );
}

/// Child: AOF2_BACKEND=fast.
#[test]
fn child_bad_backend_env() {
    if std::env::var("AOF2_CHILD_BAD_ENV").is_err() {
        return;
    }
    let e = AofManager::with_config(AofManagerConfig::default())
        .expect_err("an unknown backend name is refused");
    let msg = e.to_string();
    assert!(
        msg.contains("AOF2_BACKEND") && msg.contains("fast") && msg.contains("uring"),
        "{msg}"
    );
    // An explicit backend in the configuration wins over the variable.
    let mut cfg = AofManagerConfig::default();
    cfg.backend = IoBackend::Sync;
    AofManager::with_config(cfg).expect("explicit Sync ignores the variable");
    println!("CHILD OK");
}

/// Drops CAP_IPC_LOCK from this thread's capability sets, so RLIMIT_MEMLOCK applies to
/// io_uring buffer registration even as root.
fn drop_ipc_lock() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the ABI defines.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
        d[0].effective &= !(1 << CAP_IPC_LOCK);
        d[0].permitted &= !(1 << CAP_IPC_LOCK);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
    }
}

/// Child: a memlock allowance big enough for the ring itself but not for the 1 MiB
/// registered zero chunk.
#[test]
fn child_without_memlock() {
    let Ok(dir) = std::env::var("AOF2_CHILD_MEMLOCK_DIR") else {
        return;
    };
    drop_ipc_lock();
    let small = libc::rlimit {
        rlim_cur: 256 * 1024,
        rlim_max: 256 * 1024,
    };
    // SAFETY: plain syscall with a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &small) }, 0);
    let mut cfg = AofManagerConfig::default();
    cfg.backend = IoBackend::Uring;
    cfg.shards = 1;
    if aof2_shards::config::ShardExecutor::Threads
        .resolve()
        .unwrap()
        .is_glommio()
    {
        // glommio itself needs 512 KiB: refused up front, naming the limit.
        let e = ShardSet::start(&cfg).expect_err("too little memlock for glommio");
        assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
        println!("CHILD OK");
        return;
    }
    let set = ShardSet::start(&cfg).expect("a ring without registered buffers");
    match &set.running()[0] {
        Running::Uring(s) => {
            assert!(s.features.single_issuer, "{s:?}");
            assert!(!s.registered_zeros && s.registered_arena == 0, "{s:?}");
            assert!(
                !s.features.write_fixed && !s.features.writev_fixed,
                "no fixed-buffer opcode without registered buffers: {s:?}"
            );
        }
        r => panic!("registration refused, ring running: {r:?}"),
    }
    let log = LogHandle::open(&set, small_cfg(Path::new(&dir))).unwrap();
    let mut last = None;
    for i in 0..300u64 {
        // Enough to roll: segment preparation writes zeros without the registered chunk.
        last = Some(log.append(&payload(3, i)).unwrap());
    }
    log.flush_until(last.unwrap()).unwrap();
    assert!(log.metrics().segments_prepared >= 2);
    println!("CHILD OK");
}

#[test]
fn without_memlock_the_ring_works_unregistered() {
    if !uring_available("without_memlock_the_ring_works_unregistered") {
        return;
    }
    // Where memlock allows (root, or a large enough limit), the zero chunk is
    // registered at start, the log buffer arena when the first log is placed on the
    // shard (a shard with no log holds none), and data writes go out from them.
    let mut cfg = AofManagerConfig::default();
    cfg.backend = IoBackend::Uring;
    cfg.shards = 1;
    let set = ShardSet::start(&cfg).unwrap();
    if is_root() {
        assert!(
            matches!(
                set.running()[0],
                Running::Uring(RingSetup {
                    registered_zeros: true,
                    registered_arena: 0,
                    ..
                })
            ),
            "{:?}",
            set.running()
        );
        assert_eq!(set.shard_stats()[0].arena_bytes, 0, "no arena before a log");
        let d = tempfile::tempdir().unwrap();
        let mut c = small_cfg(d.path());
        // 1 MiB log buffers (the arena's size class) from the first segment on.
        c.segment_min_bytes = 16 << 20;
        c.segment_target_bytes = 16 << 20;
        c.segment_max_bytes = 16 << 20;
        // The shard's ring registered the arena; a caller's own ring registers nothing.
        c.commit = CommitMode::Shard;
        let log = LogHandle::open(&set, c).unwrap();
        // 8 x 1 MiB buffers + 256 blocks, made for the first log.
        assert_eq!(set.shard_stats()[0].arena_bytes, 9_437_184);
        let before = set.fixed_writes();
        let mut rids = Vec::new();
        for i in 0..2000u64 {
            rids.push(log.append(&payload(4, i)).unwrap());
            if i % 100 == 99 {
                log.flush_until(*rids.last().unwrap()).unwrap();
            }
        }
        log.flush_until(*rids.last().unwrap()).unwrap();
        let fixed = set.fixed_writes() - before;
        let ops = log.metrics().write_ops;
        assert!(
            fixed >= ops,
            "every data write came from the registered arena: {fixed} fixed (data, headers, footers) for {ops} data writes"
        );
        for (i, rid) in rids.iter().enumerate().step_by(97) {
            let r = log
                .open_reader(bop_rs::aof2::SegmentId::new(rid.segment_index() as u64))
                .unwrap();
            assert_eq!(r.read_record(*rid).unwrap().payload(), payload(4, i as u64));
        }
    }
    drop(set);
    let d = tempfile::tempdir().unwrap();
    run_child_ok(
        child("child_without_memlock").env("AOF2_CHILD_MEMLOCK_DIR", d.path()),
        "CHILD OK",
    );
}

/// Child: the write path under strace, attached once the log is open (recovery's
/// directory syncs at open are blocking calls; the write path must have none).
#[test]
fn child_durable_writes() {
    let Ok(dir) = std::env::var("AOF2_CHILD_STRACE_DIR") else {
        return;
    };
    let mut mcfg = AofManagerConfig::default();
    if let Ok(us) = std::env::var("AOF2_CHILD_POLL_US") {
        mcfg.completion_poll_us = us.parse().unwrap();
    }
    let m = AofManager::with_config(mcfg).unwrap();
    let aof = Arc::new(open(&m, small_cfg(Path::new(&dir))));
    let go = Path::new(&dir).with_extension("go");
    println!("READY");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Callers committing (several threads: on their own rings with polling, else with
    // system calls), and the shard's work: batches, rolls, seals, preparation.
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let aof = aof.clone();
            std::thread::spawn(move || {
                for i in 0..150u64 {
                    let rid = aof.append_record(&payload(5 + t, i)).unwrap();
                    if i % 3 == 0 {
                        aof.flush_until(rid).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    aof.seal_active().unwrap();
    aof.flush().unwrap();
    assert!(aof.flush_metrics().segments_sealed >= 3);
    drop(aof);
    drop(m);
    println!("CHILD OK");
}

fn strace_available() -> bool {
    std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// With polling on, callers commit on rings of their own: every write and sync of the
/// process goes through io_uring.
#[test]
fn the_io_uring_write_path_makes_no_pwrite_fdatasync_or_fsync_calls() {
    let test = "the_io_uring_write_path_makes_no_pwrite_fdatasync_or_fsync_calls";
    let Some(calls) = strace_durable_writes(test, Some(20)) else {
        return;
    };
    for banned in [
        "pwrite64",
        "pwritev",
        "pwritev2",
        "fdatasync",
        "fsync",
        "sync_file_range",
    ] {
        assert_eq!(calls(banned), 0, "{banned} called on the io_uring path");
    }
    assert!(calls("io_uring_enter") > 0, "the rings did the I/O");
}

/// By default a committing caller makes its own `pwritev2(RWF_DSYNC)` calls (no ring
/// of its own), while the shards' I/O (preparation, seals, rolls) stays on io_uring.
#[test]
fn by_default_callers_commit_with_pwritev2_and_the_shards_with_io_uring() {
    let test = "by_default_callers_commit_with_pwritev2_and_the_shards_with_io_uring";
    let Some(calls) = strace_durable_writes(test, None) else {
        return;
    };
    assert!(calls("pwritev2") > 0, "callers made their own write calls");
    assert_eq!(calls("pwrite64"), 0, "no plain pwrite");
    assert!(
        calls("io_uring_enter") > 0,
        "the shards' rings did their I/O"
    );
}

/// Runs `child_durable_writes` on io_uring (callers polling for `poll_us` if given)
/// under `strace -f -c`; returns a lookup of system call counts, or `None` where
/// io_uring or strace is missing (and not required).
fn strace_durable_writes(test: &str, poll_us: Option<u32>) -> Option<impl Fn(&str) -> u64> {
    if !uring_available(test) {
        return None;
    }
    if !strace_available() {
        assert!(
            !required(),
            "{test}: strace is required here (apt-get install strace)"
        );
        eprintln!("{test}: strace not installed; nothing to check");
        return None;
    }
    use std::io::{BufRead, BufReader};
    let d = tempfile::tempdir().unwrap();
    let summary = d.path().join("strace.txt");
    let log_dir = d.path().join("log");
    let mut cmd = child("child_durable_writes");
    cmd.env("AOF2_CHILD_STRACE_DIR", &log_dir)
        .env("AOF2_BACKEND", "uring")
        .stdout(std::process::Stdio::piped());
    if let Some(us) = poll_us {
        cmd.env("AOF2_CHILD_POLL_US", us.to_string());
    }
    let mut writer = cmd.spawn().unwrap();
    let mut out = BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("READY") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended early"
        );
    }
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&summary)
        .arg("-p")
        .arg(writer.id().to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // strace says "Process N attached" for each thread; wait for the first.
    let mut err = BufReader::new(strace.stderr.take().unwrap());
    line.clear();
    while !line.contains("attached") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "strace did not attach"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(log_dir.with_extension("go"), b"").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(
        writer.wait().unwrap().success() && rest.contains("CHILD OK"),
        "{rest}"
    );
    assert!(strace.wait().unwrap().success());
    let table = std::fs::read_to_string(&summary).unwrap();
    println!("{test}:\n{table}");
    Some(move |name: &str| -> u64 {
        table
            .lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // % time, seconds, usecs/call, calls, [errors], syscall
                f.get(3).and_then(|c| c.parse().ok())
            })
            .unwrap_or(0)
    })
}

/// CPU time (ns) and voluntary context switches of this process's shard threads.
fn shard_threads_usage() -> (u64, u64, usize) {
    let (mut cpu, mut switches, mut n) = (0, 0, 0);
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with("aof2-shard") {
            continue;
        }
        n += 1;
        let sched = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        cpu += sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        switches += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (cpu, switches, n)
}

/// Child: a fresh process, so only this manager's shard threads exist.
#[test]
fn child_idle_manager() {
    let Ok(dir) = std::env::var("AOF2_CHILD_IDLE_DIR") else {
        return;
    };
    let m = manager();
    let logs: Vec<Aof> = (0..4)
        .map(|i| {
            let mut c = small_cfg(&Path::new(&dir).join(format!("log{i}")));
            c.flush.flush_interval_ms = 5;
            open(&m, c)
        })
        .collect();
    for aof in &logs {
        // Unflushed data arms the interval timer; the flush after it must disarm it.
        let rid = aof.append_record(b"some data").unwrap();
        aof.flush_until(rid).unwrap();
        aof.append_record(b"left to the interval").unwrap();
    }
    // Settle: the interval flush (5 ms), then each log gives its buffers back once it
    // has been quiet for a while (one wake-up, within 2 x 50 ms of its last append).
    std::thread::sleep(Duration::from_millis(300));
    let (cpu0, sw0, n) = shard_threads_usage();
    // glommio starts a helper thread per executor (its blocking pool), named after it.
    let per_shard = if m.executor().is_glommio() { 2 } else { 1 };
    assert_eq!(n, m.shard_count() * per_shard);
    std::thread::sleep(Duration::from_secs(1));
    let (cpu1, sw1, _) = shard_threads_usage();
    let (cpu, wakeups) = (cpu1 - cpu0, sw1 - sw0);
    println!(
        "idle for 1 s on {}: {cpu} ns CPU, {wakeups} wake-ups over {n} shard threads",
        m.io_backend()
    );
    // Not "little": none. An idle shard sleeps with nothing armed but its wake-up
    // read (io_uring) or an untimed park (portable), so it is never scheduled.
    assert_eq!(cpu, 0, "an idle manager used {cpu} ns of CPU in a second");
    assert_eq!(
        wakeups, 0,
        "an idle manager woke {wakeups} times in a second"
    );
    // And the logs did go idle: each gave its buffers back before the quiet second.
    for aof in &logs {
        assert_eq!(aof.flush_metrics().idle_buffer_releases, 1);
    }
    drop(logs);
    println!("CHILD OK");
}

#[test]
fn an_idle_manager_uses_no_cpu_and_never_wakes() {
    let d = tempfile::tempdir().unwrap();
    let (stdout, _) = run_child_ok(
        child("child_idle_manager").env("AOF2_CHILD_IDLE_DIR", d.path()),
        "CHILD OK",
    );
    println!(
        "{}",
        stdout
            .lines()
            .find(|l| l.contains("idle for"))
            .unwrap_or("")
    );
}
