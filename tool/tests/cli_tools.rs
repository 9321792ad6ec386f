//! The read-only tools end to end: `aof2 dump`, `verify`, `stat`, `tail` run as the
//! built binary against logs this test writes; `verify` against flipped bytes.

#[path = "../../tests/common/mod.rs"]
mod common;

use aof2_shards::inspect::LogDir;
use bop_rs::aof2::error::AofError;
use bop_rs::aof2::RecordId;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn aof2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aof2"))
        .args(args)
        .output()
        .expect("aof2 runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `n` text records (`record-<i>`), sealing once in the middle; the last
/// segment is left unsealed (active), as a crash after the last sync leaves it.
fn write_log(root: &Path, n: u64) -> Vec<RecordId> {
    let m = manager();
    let aof = open(&m, small_cfg(root));
    let mut rids = Vec::new();
    for i in 0..n {
        let mut p = format!("record-{i}").into_bytes();
        p.resize(600, b'.');
        rids.push(aof.append_record(&p).unwrap());
        if i == n / 2 {
            aof.seal_active().unwrap();
        }
    }
    aof.flush().unwrap();
    drop(aof);
    unseal_last(root);
    rids
}

#[test]
fn dump_stat_and_verify_read_a_healthy_log() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("log");
    let rids = write_log(&root, 300);
    let r = root.to_str().unwrap();

    let out = aof2(&["dump", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 300);
    for (i, (line, rid)) in lines.iter().zip(&rids).enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[0], rid.to_string());
        assert_eq!(cols[2], "600");
        assert!(cols[3].starts_with(&format!("record-{i}.")), "{line}");
    }

    let from = rids[123].to_string();
    let out = aof2(&["dump", r, "--from", &from, "--limit", "5"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(got, lines[123..128]);
    // The raw u64 form works too.
    let raw = rids[200].as_u64().to_string();
    let out = aof2(&["dump", r, "--from", &raw, "--limit", "1", "--hex"]);
    assert!(out.status.success());
    let hex: String = b"record-200".iter().map(|b| format!("{b:02x}")).collect();
    assert!(text(&out.stdout).contains(&hex), "{}", text(&out.stdout));
    let out = aof2(&["dump", r, "--from", "nonsense"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a record id"),
        "{}",
        text(&out.stderr)
    );
    let out = aof2(&["dump", r, "--from", "0:65"]);
    assert!(
        !out.status.success(),
        "an id that is not a frame is an error"
    );

    let out = aof2(&["stat", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("300 records"), "{s}");
    assert!(s.contains("sealed") && s.contains("active"), "{s}");

    let out = aof2(&["verify", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: "), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("300 records"));
}

#[test]
fn tools_give_clear_errors_for_missing_or_foreign_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("notes.txt"), "hi").unwrap();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(foreign.join("segments")).unwrap();
    std::fs::write(foreign.join("segments/x.bin"), "hi").unwrap();
    for cmd in ["dump", "verify", "stat", "tail"] {
        for (dir, want) in [
            (&missing, "does not exist"),
            (&plain, "no segments/ directory"),
            (&foreign, "x.bin"),
        ] {
            let out = aof2(&[cmd, dir.to_str().unwrap()]);
            assert!(!out.status.success(), "{cmd} {}", dir.display());
            let e = text(&out.stderr);
            assert!(e.contains(want), "{cmd}: {e}");
            assert!(e.contains(&dir.display().to_string()), "{cmd}: {e}");
        }
        let out = aof2(&[cmd, "--help"]);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("Usage"));
    }
}

#[test]
fn verify_finds_a_flipped_byte_anywhere_in_a_sealed_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("log");
    write_log(&root, 80);
    // Reopen once: recovery seals the last segment, so every segment is sealed.
    drop(open(&manager(), small_cfg(&root)));
    let dir = LogDir::open(&root).unwrap();
    dir.verify().expect("healthy");
    let seg = dir.segments()[0].clone();
    let size = seg.header.file_size;
    let data_end = seg.footer.unwrap().data_end;
    // Every byte of the header, of the first frames and of the footer; a sample of
    // the frames, the zeros after them and the rest of the footer block.
    let mut offsets: Vec<u64> = (0..640).collect();
    offsets.extend(size - 4096..size - 4096 + 80);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..600 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        offsets.push(x % size);
    }
    offsets.extend([data_end - 1, data_end, size - 1, size - 4096 - 1]);
    for &off in &offsets {
        flip(&seg.path, off);
        let r = LogDir::open(&root).and_then(|d| d.verify());
        flip(&seg.path, off);
        let e = r.expect_err(&format!("flipped byte at {off} went unnoticed"));
        let msg = e.to_string();
        assert!(
            msg.contains(&seg.path.display().to_string()),
            "offset {off}: {msg}"
        );
        if let AofError::Corruption {
            offset, segment, ..
        } = e
        {
            assert_eq!(segment, seg.id);
            assert!(
                offset <= off.max(data_end),
                "offset {off}: reported {offset}"
            );
        }
    }
    // Through the binary: the first problem with segment, offset and path; exit 1.
    let frame_byte = 64 + 40;
    flip(&seg.path, frame_byte);
    let out = aof2(&["verify", root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("segment 0 at offset 64"), "{e}");
    assert!(e.contains(&seg.path.display().to_string()), "{e}");
}

#[test]
fn verify_tells_a_torn_tail_from_damaged_synced_frames_in_an_unsealed_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("log");
    let m = manager();
    let mut rids = Vec::new();
    {
        let aof = open(&m, small_cfg(&root));
        for i in 0..30 {
            let rid = aof.append_record(&payload(5, i)).unwrap();
            aof.flush_until(rid).unwrap(); // each record synced before the next
            rids.push(rid);
        }
    } // closed
    unseal_last(&root); // as a crash after the last sync leaves it
    let dir = LogDir::open(&root).unwrap();
    let seg = dir.segments().last().unwrap().clone();
    assert!(seg.footer.is_none());
    let st = dir.verify().unwrap();
    assert!(st.last().unwrap().torn_tail.is_none());
    // Damage to the last frame looks like a torn write: reported, not an error.
    let last = rids.last().unwrap().segment_offset() as u64;
    flip(&seg.path, last + 40);
    let st = LogDir::open(&root).unwrap().verify().unwrap();
    assert_eq!(st.last().unwrap().torn_tail.as_ref().unwrap().0, last);
    flip(&seg.path, last + 40);
    // Damage to a frame that later frames prove was synced is corruption.
    let victim = rids[10].segment_offset() as u64;
    flip(&seg.path, victim + 40);
    let e = LogDir::open(&root).unwrap().verify().unwrap_err();
    assert!(
        matches!(e, AofError::Corruption { offset, .. } if offset == victim),
        "{e}"
    );
    let out = aof2(&["verify", root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn tail_follows_a_live_writer_without_its_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("log");
    let m = manager();
    let aof = open(&m, small_cfg(&root));
    for i in 0..5 {
        aof.append_record(format!("early-{i}").as_bytes()).unwrap();
    }
    aof.flush().unwrap();
    // `tail -n 2` without -f prints the last two and exits.
    let out = aof2(&["tail", "-n", "2", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert_eq!(s.lines().count(), 2, "{s}");
    assert!(s.contains("early-3") && s.contains("early-4"), "{s}");

    let (mut child, rx) = tail_follow(&root, "10");
    // It starts at the last record; wait for that before appending more.
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("tail -f prints the last record");
    assert!(first.contains("early-4"), "{first}");
    let mut seen = vec![first];
    // Appends across several rolls and seals, some flushed at once, some by the timer.
    let n = 400;
    for i in 0..n {
        let mut p = format!("live-{i}-").into_bytes();
        p.resize(300 + (i % 7) * 100, b'x');
        let rid = aof.append_record(&p).unwrap();
        if i % 50 == 0 {
            aof.flush_until(rid).unwrap();
        }
        if i % 150 == 149 {
            aof.seal_active().unwrap();
        }
    }
    aof.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < n + 1 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(l);
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.is_empty(), "tail -f wrote to stderr: {err} ({status})");
    assert_eq!(
        seen.len(),
        n + 1,
        "saw {} lines: {:?}",
        seen.len(),
        seen.last()
    );
    assert!(seen[0].contains("early-4"), "{}", seen[0]);
    for (i, l) in seen[1..].iter().enumerate() {
        assert!(l.contains(&format!("\tlive-{i}-")), "line {i}: {l}");
    }
    // The writer still holds its lock throughout: tail never took it.
    assert!(matches!(
        bop_rs::aof2::Aof::new(m.handle(), small_cfg(&root)),
        Err(AofError::Locked { .. })
    ));
}

/// A writer in this process appending small durable batches to 64 KiB segments, so it
/// rolls (seals, starts the next segment, prepares another file) every few
/// milliseconds, until `stop`.
fn live_writer(
    root: &Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let m = manager();
        let aof = open(&m, small_cfg(&root));
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut last = None;
            for _ in 0..4 {
                let mut p = format!("live-{n}").into_bytes();
                p.resize(2000 + (n as usize * 131) % 6000, b'~');
                last = Some(aof.append_record(&p).unwrap());
                n += 1;
            }
            aof.flush_until(last.unwrap()).unwrap();
        }
        n
    })
}

/// The read-only tools beside a live writer never report corruption that is not on
/// disk: a segment sealed or rolled under them is re-read, and the segment being
/// written is checked up to where it can be and said to be live.
#[test]
fn the_tools_never_cry_wolf_beside_a_writer_that_rolls_every_few_milliseconds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = live_writer(&root, stop.clone());
    // Wait for a few segments.
    let t = Instant::now();
    while std::fs::read_dir(root.join("segments"))
        .map(|d| d.count())
        .unwrap_or(0)
        < 4
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the writer did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = root.to_str().unwrap();
    let runs: u32 = std::env::var("AOF2_TOOL_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let mut live_noted = 0;
    // The log grows while the tools run, and each run reads all of it: on a slow disk
    // the rounds stop after a few seconds (at least 3 rounds).
    let started = Instant::now();
    let mut rounds = 0;
    for i in 0..runs {
        if i >= 3 && started.elapsed() > Duration::from_secs(4) {
            break;
        }
        rounds += 1;
        for args in [
            vec!["verify", r],
            vec!["stat", r],
            vec!["dump", r, "--limit", "100000"],
            vec!["tail", "-n", "1", r],
        ] {
            let out = aof2(&args);
            let (o, e) = (text(&out.stdout), text(&out.stderr));
            assert!(
                out.status.success(),
                "run {i}: aof2 {args:?} failed beside a live writer:\nstdout: {}\nstderr: {e}",
                o.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
            assert!(
                !o.contains("corrupt") && !e.contains("corrupt"),
                "run {i}: {args:?}: {o}{e}"
            );
            if (args[0] == "verify" && o.contains("being written"))
                || (args[0] == "stat" && o.contains("writing"))
            {
                live_noted += 1;
            }
        }
        // The library's own check, many times between two tool runs.
        for _ in 0..10 {
            let dir = LogDir::open(&root).expect("opens beside a live writer");
            dir.verify().expect("verifies beside a live writer");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let elapsed = t.elapsed();
    let appended = writer.join().unwrap();
    let segments = LogDir::open(&root).unwrap().segments().len() as u32;
    println!(
        "{rounds} runs of each tool beside a writer: {appended} records, {segments} segments in {elapsed:.1?}"
    );
    assert!(
        segments > rounds,
        "the writer rolled while the tools ran ({segments} segments)"
    );
    assert!(
        live_noted > 0,
        "verify or stat says the last segment is being written while a writer holds the log"
    );
    // Once the writer is gone, everything verifies, with nothing said to be live.
    let out = aof2(&["verify", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("being written"));
}

/// `tail -f` across writer sessions: each session closes cleanly and the next one
/// continues the last segment (its footer zeroed, then sealed again at its close);
/// the tool prints every record of every session, once, in order.
#[test]
fn tail_follows_writer_sessions_that_continue_the_last_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("log");
    let m = manager();
    let mut cfg = bop_rs::aof2::config::AofConfig::default();
    cfg.root_dir = root.clone();
    {
        let aof = open(&m, cfg.clone());
        aof.append_record(b"session-0-0").unwrap();
    }
    let (mut child, rx) = tail_follow(&root, "5");
    let mut seen = vec![rx.recv_timeout(Duration::from_secs(30)).unwrap()];
    let mut want = vec!["session-0-0".to_string()];
    for session in 1..6 {
        let aof = open(&m, cfg.clone());
        for i in 0..3 {
            let p = format!("session-{session}-{i}");
            aof.append_record(p.as_bytes()).unwrap();
            want.push(p);
        }
        aof.flush().unwrap();
        // The tool shows them while the session still writes (the segment unsealed).
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < want.len() && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
                seen.push(l);
            }
        }
        assert_eq!(seen.len(), want.len(), "session {session}: {seen:?}");
        drop(aof);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let files = std::fs::read_dir(root.join("segments")).unwrap().count();
    assert_eq!(files, 1, "one segment, continued by every session");
    assert_eq!(seen.len(), want.len(), "{seen:?}");
    for (l, w) in seen.iter().zip(&want) {
        assert!(l.ends_with(&format!("\t{w}")), "{l} vs {w}");
    }
}

/// `aof2 tail -f -n 1` of `root`, checking every `interval_ms`; its stdout, line by line.
fn tail_follow(
    root: &std::path::Path,
    interval_ms: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aof2"))
        .args(["tail", "-f", "-n", "1", "--interval-ms", interval_ms])
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// `stat --json` and `verify --json`: one JSON object each, with the same figures as
/// the text; a damaged log is `"ok": false` with the error, and exit status 1.
#[test]
fn stat_and_verify_print_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let rids = write_log(dir.path(), 300);
    let root = dir.path().to_str().unwrap();
    let out = aof2(&["stat", "--json", root]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stat prints JSON");
    assert_eq!(v["records"], 300);
    let segs = v["segments"].as_array().unwrap();
    assert!(segs.len() >= 2);
    assert_eq!(
        segs.iter()
            .map(|s| s["records"].as_u64().unwrap())
            .sum::<u64>(),
        300
    );
    let out = aof2(&["verify", "--json", root]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify prints JSON");
    assert_eq!(
        (v["ok"].as_bool(), v["records"].as_u64()),
        (Some(true), Some(300))
    );
    // Damage a synced frame of a sealed segment.
    let victim = rids[10];
    let seg = dir
        .path()
        .join("segments")
        .join(format!("{:020}.seg", victim.segment_index()));
    flip(&seg, victim.segment_offset() as u64 + 40);
    let out = aof2(&["verify", "--json", root]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on failure too");
    assert_eq!(v["ok"].as_bool(), Some(false));
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&seg.display().to_string()),
        "{v}"
    );
}

#[test]
fn stat_verify_and_dump_see_segments_only_the_archive_holds() {
    use bop_rs::aof2::config::{ArchiveStore, RetentionPolicy};
    use bop_rs::aof2::{AofManager, AofManagerConfig};
    let tmp = tempfile::tempdir().unwrap();
    let (root, store) = (tmp.path().join("log"), tmp.path().join("store"));
    let mut mc = AofManagerConfig::default();
    mc.archive = Some(ArchiveStore::LocalDir(store.clone()));
    let m = AofManager::with_config(mc).unwrap();
    let mut c = small_cfg(&root);
    c.retention = RetentionPolicy::Size {
        max_total_bytes: 128 << 10,
    };
    let aof = open(&m, c);
    for i in 0..600u64 {
        let mut p = format!("record-{i}").into_bytes();
        p.resize(1000, b'.');
        aof.append_record(&p).unwrap();
    }
    aof.flush().unwrap();
    aof.seal_active().unwrap();
    let start = Instant::now();
    while aof.flush_metrics().archive_local_drops < 3
        || aof.flush_metrics().archive_backlog_segments > 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no local copy dropped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    aof.close().unwrap();
    drop(aof);
    let (r, s) = (root.to_str().unwrap(), store.to_str().unwrap());

    let out = aof2(&["stat", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains(" archive ") && t.contains("upload backlog 0 sealed segments"),
        "{t}"
    );

    let out = aof2(&["verify", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("stub only"),
        "{}",
        text(&out.stdout)
    );
    let out = aof2(&["verify", r, "--archive-dir", s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("object fetched and checked"));

    let out = aof2(&["dump", r, "--archive-dir", s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 600);
    for (i, l) in lines.iter().enumerate() {
        assert!(l.contains(&format!("record-{i}.")), "line {i}: {l}");
    }
    // Without the store, dump names what it needs.
    let out = aof2(&["dump", r]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--archive-dir"),
        "{}",
        text(&out.stderr)
    );

    // A tampered object: verify names the segment and the object.
    let obj = std::fs::read_dir(&store)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut b = std::fs::read(&obj).unwrap();
    b[5000] ^= 1;
    std::fs::write(&obj, b).unwrap();
    let out = aof2(&["verify", r, "--archive-dir", s]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("not the one uploaded") && e.contains(".stub"),
        "{e}"
    );
}

#[test]
fn a_reader_that_closes_the_pipe_early_ends_dump_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("log");
    write_log(&root, 3000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_aof2"))
        .args(["dump", root.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe, as `aof2 dump | head -1` does.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("record-0."), "{first}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "no message, no panic");
}
