//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bop_rs::aof2::config::{AofConfig, SegmentId};
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig, RecordId};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

struct StderrLogger;
impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        eprintln!(
            "[{:?}] {} {}",
            std::thread::current().name(),
            r.level(),
            r.args()
        );
    }
    fn flush(&self) {}
}

/// `AOF2_TEST_LOG=trace|debug|info` prints the engine's log to stderr.
pub fn init_log() {
    let level = match std::env::var("AOF2_TEST_LOG").as_deref() {
        Ok("trace") => log::LevelFilter::Trace,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        _ => return,
    };
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}

/// A manager with its default shard count.
pub fn manager() -> AofManager {
    init_log();
    AofManager::with_config(AofManagerConfig::default()).expect("manager starts")
}

/// A config with small segments (fast to prepare, so tests roll often).
pub fn small_cfg(root: &Path) -> AofConfig {
    let mut c = AofConfig::default();
    c.root_dir = root.to_path_buf();
    c.segment_min_bytes = 64 * 1024;
    c.segment_target_bytes = 64 * 1024;
    c.segment_max_bytes = 1024 * 1024;
    c
}

/// Opens a log. A `Locked` right after the previous holder closed is retried briefly:
/// a child process another test spawns at that instant holds a copy of every open file
/// description (the lock file's too, so its `flock`) until it execs.
pub fn open(m: &AofManager, cfg: AofConfig) -> Aof {
    let start = std::time::Instant::now();
    loop {
        match Aof::new(m.handle(), cfg.clone()) {
            Err(bop_rs::aof2::AofError::Locked { .. })
                if start.elapsed() < Duration::from_secs(2) =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            r => return r.expect("log opens"),
        }
    }
}

/// Reads record `rid` back through a reader of its segment.
pub fn read_back(aof: &Aof, rid: RecordId) -> Vec<u8> {
    let reader = aof
        .open_reader(SegmentId::new(rid.segment_index() as u64))
        .expect("reader opens");
    reader
        .read_record(rid)
        .expect("record reads")
        .payload()
        .to_vec()
}

/// Deterministic payload for (tag, seq): a readable prefix and filler of varying length.
pub fn payload(tag: u64, seq: u64) -> Vec<u8> {
    let mut p = format!("t{tag}-s{seq}-").into_bytes();
    let len = ((tag.wrapping_mul(31) ^ seq.wrapping_mul(2_654_435_761)) % 3000) as usize;
    p.extend((0..len).map(|i| (i as u64 ^ seq ^ tag) as u8));
    p
}

/// Runs `f` on a thread and fails the test if it does not finish in `limit`.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?} (stall or deadlock)"),
    }
}

/// A command that re-runs this test binary for one test, as a child process.
pub fn child(test: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut c = Command::new(exe);
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null());
    c
}

/// Runs a child command to completion and fails the test unless it exited with success
/// and printed `marker` (its last step). Returns its stdout and stderr. A child that
/// runs past `AOF2_CHILD_TIMEOUT_SECS` (300 by default) is a hang: the failure carries
/// every thread's stack (through gdb, where installed) and the child is killed, so a
/// CI run fails with the evidence instead of running out of time.
pub fn run_child_ok(cmd: &mut Command, marker: &str) -> (String, String) {
    use std::io::Read;
    let limit = Duration::from_secs(
        std::env::var("AOF2_CHILD_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let mut ch = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the child runs");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            String::from_utf8_lossy(&b).into_owned()
        })
    };
    let out = drain(Box::new(ch.stdout.take().expect("piped")));
    let err = drain(Box::new(ch.stderr.take().expect("piped")));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = ch.try_wait().expect("the child can be waited for") {
            break st;
        }
        if start.elapsed() > limit {
            let stacks = stacks_of(ch.id());
            let _ = ch.kill();
            let _ = ch.wait();
            let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
            panic!(
                "child hung: still running after {limit:?}; its threads:\n{stacks}\n\
                 stdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success() && stdout.contains(marker),
        "child failed ({status}):\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// Every thread's stack of process `pid`: user stacks through gdb where it is
/// installed, and each thread's kernel wait channel either way.
fn stacks_of(pid: u32) -> String {
    let mut s = String::new();
    if let Ok(o) = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .output()
    {
        s.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            s.push_str(&format!(
                "task {:?} {} wchan {}\n{}",
                t.file_name(),
                read("comm").trim(),
                read("wchan"),
                read("stack")
            ));
        }
    }
    s
}

/// In a SIGKILL test's child process (run by [`run_then_kill`] with `AOF2_CRASH_DIR`
/// and `AOF2_CRASH_ROUND` set): its directory and round. `None` when the test runs on
/// its own, where it is only meaningful as that child.
pub fn crash_child() -> Option<(std::path::PathBuf, u64)> {
    let dir = std::env::var("AOF2_CRASH_DIR").ok()?;
    let round = std::env::var("AOF2_CRASH_ROUND").ok()?;
    Some((
        dir.into(),
        round.parse().expect("AOF2_CRASH_ROUND is a number"),
    ))
}

/// Spawns `cmd` with its stdout piped, collects the lines it prints for `run_for`, then
/// kills it with SIGKILL and returns every line it printed (each line is one write
/// below PIPE_BUF, so a kill never truncates one).
pub fn run_then_kill(cmd: &mut Command, run_for: Duration) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut c = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let out = c.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut lines = Vec::new();
    while started.elapsed() < run_for {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(1)) {
            lines.push(l);
        }
    }
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Flips the low bit of the byte of `path` at `offset` (flipping twice restores it).
pub fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}

/// Leaves the last segment of a cleanly closed log as a crash after its last sync would
/// (a clean close seals it): its footer region zeroed.
#[allow(dead_code)]
pub fn unseal_last(root: &Path) {
    let last = std::fs::read_dir(root.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a segment");
    let mut b = std::fs::read(&last).unwrap();
    let n = b.len();
    b[n - 4096..].fill(0);
    std::fs::write(&last, &b).unwrap();
}
