//! `Compression::Zstd` end to end: the background worker swaps sealed segments to
//! compressed files, readers and the catalogue see no difference but the sizes, a
//! reopen compresses what an earlier session left raw, release and retention count
//! and remove compressed files, and a compression that fails keeps the raw segment.

mod common;

use aof2_shards::clock::Clock;
use aof2_shards::fs::posix::PosixFs;
use aof2_shards::fs::{EntryKind, Fs, FsFile, FsLock, OpenMode};
use aof2_shards::log_handle::LogHandle;
use aof2_shards::manager::ShardSet;
use bop_rs::aof2::config::{AofConfig, Compression, RetentionPolicy, SegmentId};
use bop_rs::aof2::reader::SealedSegmentStream;
use bop_rs::aof2::{Aof, AofManagerConfig, RecordId};
use common::*;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn json_line(i: u64) -> Vec<u8> {
    format!(
        r#"{{"ts":"2026-11-30T08:{:02}:{:02}.{:03}Z","seq":{i},"level":"{}","service":"orders","msg":"order {} accepted for customer {}","items":{},"total_cents":{}}}"#,
        (i / 60_000) % 60,
        (i / 1000) % 60,
        i % 1000,
        ["info", "warn", "debug"][(i % 3) as usize],
        100_000 + i * 7,
        (i * 7919) % 5000,
        i % 13,
        (i * 104_729) % 100_000
    )
    .into_bytes()
}

fn zstd_cfg(root: &Path) -> AofConfig {
    let mut c = small_cfg(root);
    c.compression = Compression::Zstd;
    c
}

/// Appends JSON lines until `segments` segments are sealed; returns what it appended.
fn fill(aof: &Aof, from: u64, segments: u32) -> Vec<(RecordId, Vec<u8>)> {
    let mut recs = Vec::new();
    let mut i = from;
    let first = aof.append_record(&json_line(i)).unwrap();
    recs.push((first, json_line(i)));
    while recs.last().unwrap().0.segment_index() < first.segment_index() + segments {
        i += 1;
        let p = json_line(i);
        recs.push((aof.append_record(&p).unwrap(), p));
    }
    aof.flush().unwrap();
    recs
}

/// Waits until the worker has compressed every sealed segment (but the last segment
/// of a log reopened after a clean close, which the session may still continue: it
/// stays raw until a record goes to it or to a new segment).
fn caught_up(aof: &Aof) {
    let start = Instant::now();
    loop {
        let m = aof.flush_metrics();
        let cat = aof.catalog_snapshot();
        let continuable = cat.last().filter(|s| s.sealed).map(|s| s.segment_id);
        let raw_sealed = cat
            .iter()
            .filter(|s| s.sealed && !s.compressed && Some(s.segment_id) != continuable)
            .count();
        if m.compression_backlog_segments == 0 && raw_sealed == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "compression did not catch up: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn dir_bytes(root: &Path) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut names = Vec::new();
    for e in std::fs::read_dir(root.join("segments")).unwrap() {
        let e = e.unwrap();
        // A file the log removes meanwhile (a released or replaced one) is gone.
        let Ok(m) = e.metadata() else { continue };
        total += m.len();
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    (total, names)
}

fn check_all(aof: &Aof, recs: &[(RecordId, Vec<u8>)]) {
    for (rid, p) in recs {
        assert_eq!(&read_back(aof, *rid), p, "{rid}");
    }
    let mut s = SealedSegmentStream::new(aof).unwrap();
    let mut seen = Vec::new();
    while seen.len() < recs.len() {
        let mut c = s.next_segment_blocking().unwrap().unwrap().into_cursor();
        while let Some(r) = c.next().unwrap() {
            seen.push((r.record_id(), r.payload().to_vec()));
        }
    }
    assert_eq!(seen, recs);
}

#[test]
fn json_lines_compress_to_under_40_percent_and_read_back_the_same() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, zstd_cfg(d.path()));
    let recs = fill(&aof, 0, 40);
    aof.seal_active().unwrap();
    caught_up(&aof);
    let cat = aof.catalog_snapshot();
    let sealed: Vec<_> = cat.iter().filter(|s| s.sealed).collect();
    assert!(sealed.len() >= 40, "{}", sealed.len());
    let raw: u64 = sealed.iter().map(|s| s.file_size).sum();
    let disk: u64 = sealed.iter().map(|s| s.disk_bytes).sum();
    assert!(sealed
        .iter()
        .all(|s| s.compressed && s.disk_bytes < s.file_size));
    // The whole directory (spares and the active segment included) against the raw
    // bytes of the sealed segments.
    let (total, names) = dir_bytes(d.path());
    assert!(
        total * 10 <= raw * 4,
        "directory {total} of raw {raw} (sealed compressed to {disk}): {names:?}"
    );
    eprintln!("directory {total} of raw {raw}, sealed segments compressed to {disk}");
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    let mm = aof.flush_metrics();
    assert_eq!(mm.segments_compressed, sealed.len() as u64);
    assert_eq!(mm.compression_disk_bytes, disk);
    check_all(&aof, &recs);
    // Tier 0: reading a record again finds its chunk inflated in memory.
    let before = m.tier0_stats();
    for (rid, p) in recs.iter().step_by(97) {
        assert_eq!(&read_back(&aof, *rid), p);
        assert_eq!(&read_back(&aof, *rid), p);
    }
    let after = m.tier0_stats();
    let reads = recs.iter().step_by(97).count() as u64 * 2;
    assert_eq!(
        after.hits + after.misses - before.hits - before.misses,
        reads
    );
    assert!(
        after.hits - before.hits >= reads / 2,
        "{before:?} {after:?}"
    );
    assert!(after.bytes > 0 && after.bytes <= 64 << 20);
    // A reopen reads the compressed files and agrees.
    aof.close().unwrap();
    drop(aof);
    let aof = open(&m, zstd_cfg(d.path()));
    check_all(&aof, &recs);
    let again = aof.catalog_snapshot();
    assert_eq!(again.iter().filter(|s| s.compressed).count(), sealed.len());
}

#[test]
fn segments_left_raw_by_an_earlier_session_are_compressed_after_the_next_open() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(d.path()));
    let recs = fill(&aof, 0, 6);
    aof.close().unwrap();
    drop(aof);
    assert!(dir_bytes(d.path()).1.iter().all(|n| !n.ends_with(".zst")));
    let aof = open(&m, zstd_cfg(d.path()));
    caught_up(&aof);
    let cat = aof.catalog_snapshot();
    assert!(cat.iter().filter(|s| s.compressed).count() >= 6);
    check_all(&aof, &recs);
    // Compression off again: compressed segments stay compressed and read the same.
    aof.close().unwrap();
    drop(aof);
    let aof = open(&m, small_cfg(d.path()));
    check_all(&aof, &recs);
}

#[test]
fn release_and_size_retention_count_and_remove_compressed_files() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, zstd_cfg(d.path()));
    let recs = fill(&aof, 0, 8);
    caught_up(&aof);
    let keep = recs[recs.len() / 2].0;
    let n = aof.release_before(keep).unwrap();
    assert!(n >= 3, "{n}");
    let start = Instant::now();
    while dir_bytes(d.path())
        .1
        .iter()
        .any(|f| f.ends_with(".zst") && f < &format!("{:020}", keep.segment_index()))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "released .zst files stay"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    check_all(
        &aof,
        &recs[recs.partition_point(|r| r.0.segment_index() < keep.segment_index())..],
    );
    aof.close().unwrap();
    drop(aof);
    // Size retention counts bytes on disk: a limit of ~6 raw segments keeps many
    // more compressed ones.
    let d = tempfile::tempdir().unwrap();
    let mut cfg = zstd_cfg(d.path());
    cfg.retention = RetentionPolicy::Size {
        max_total_bytes: 6 * 64 * 1024,
    };
    let aof = open(&m, cfg);
    let mut i = 0;
    // One segment at a time, compressed before the next (retention counts a raw
    // segment at its raw size while it waits).
    for _ in 0..30 {
        i += fill(&aof, i, 1).len() as u64;
        caught_up(&aof);
    }
    let cat = aof.catalog_snapshot();
    let disk: u64 = cat.iter().filter(|s| s.sealed).map(|s| s.disk_bytes).sum();
    let kept = cat.iter().filter(|s| s.sealed).count();
    assert!(disk <= 6 * 64 * 1024, "{disk}");
    assert!(kept > 12, "only {kept} compressed segments kept");
    assert!(aof.flush_metrics().segments_released > 0);
}

/// The real disk, with ENOSPC for creating compressed files while `full` is set, and
/// holding their creation back while `hold` is set.
struct FullForZst {
    inner: PosixFs,
    full: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
}

impl Fs for FullForZst {
    fn mkdir(&self, p: &Path, mode: u32) -> std::io::Result<()> {
        self.inner.mkdir(p, mode)
    }
    fn kind(&self, p: &Path) -> std::io::Result<Option<EntryKind>> {
        self.inner.kind(p)
    }
    fn list_dir(&self, p: &Path) -> std::io::Result<Vec<OsString>> {
        self.inner.list_dir(p)
    }
    fn open(&self, p: &Path, mode: OpenMode) -> std::io::Result<Arc<dyn FsFile>> {
        let zst = p.to_string_lossy().ends_with(".zst.tmp");
        if zst && matches!(mode, OpenMode::CreateNew { .. }) {
            while self.hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        self.inner.open(p, mode)
    }
    fn rename(&self, a: &Path, b: &Path) -> std::io::Result<()> {
        self.inner.rename(a, b)
    }
    fn unlink(&self, p: &Path) -> std::io::Result<()> {
        self.inner.unlink(p)
    }
    fn fsync_dir(&self, p: &Path) -> std::io::Result<()> {
        self.inner.fsync_dir(p)
    }
    fn settle_dir(&self, p: &Path) -> std::io::Result<()> {
        self.inner.settle_dir(p)
    }
    fn lock_exclusive(&self, p: &Path, mode: u32) -> std::io::Result<Box<dyn FsLock>> {
        self.inner.lock_exclusive(p, mode)
    }
}

#[test]
fn a_full_disk_during_compression_keeps_the_raw_segment_and_loses_nothing() {
    init_log();
    let d = tempfile::tempdir().unwrap();
    let full = Arc::new(AtomicBool::new(true));
    let fs = Arc::new(FullForZst {
        inner: PosixFs::new(),
        full: full.clone(),
        hold: Arc::new(AtomicBool::new(false)),
    });
    let set = ShardSet::start_with(&AofManagerConfig::default(), fs.clone()).unwrap();
    let log = LogHandle::open_with(&set, zstd_cfg(d.path()), fs.clone(), Clock::System, 7).unwrap();
    let mut recs = Vec::new();
    for i in 0..2000 {
        let p = json_line(i);
        recs.push((log.append(&p).unwrap(), p));
    }
    log.flush().unwrap();
    let start = Instant::now();
    while log.metrics().compression_failures == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no compression tried"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Nothing compressed, nothing lost, no temp file left, every record readable.
    let cat = log.view().catalog();
    assert!(cat.iter().filter(|s| s.sealed).count() >= 2);
    assert!(cat.iter().all(|s| !s.compressed));
    let m = log.metrics();
    assert!(m.compression_backlog_segments >= 2, "{m:?}");
    assert_eq!(m.segments_compressed, 0);
    let (_, names) = dir_bytes(d.path());
    assert!(names.iter().all(|n| !n.contains(".zst")), "{names:?}");
    for (rid, p) in &recs {
        let r = log
            .open_reader(SegmentId::new(rid.segment_index() as u64))
            .unwrap();
        assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..]);
    }
    log.close().unwrap();
    drop(log);
    // Space again: the next open compresses them.
    full.store(false, Ordering::SeqCst);
    let log = LogHandle::open_with(&set, zstd_cfg(d.path()), fs, Clock::System, 8).unwrap();
    let start = Instant::now();
    while log.metrics().compression_backlog_segments > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not compressed after reopen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(log.view().catalog().iter().filter(|s| s.compressed).count() >= 2);
    for (rid, p) in &recs {
        let r = log
            .open_reader(SegmentId::new(rid.segment_index() as u64))
            .unwrap();
        assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..]);
    }
}

#[test]
fn a_reader_mapping_the_raw_file_keeps_reading_it_across_the_swap() {
    init_log();
    let d = tempfile::tempdir().unwrap();
    let hold = Arc::new(AtomicBool::new(true));
    let fs = Arc::new(FullForZst {
        inner: PosixFs::new(),
        full: Arc::new(AtomicBool::new(false)),
        hold: hold.clone(),
    });
    let set = ShardSet::start_with(&AofManagerConfig::default(), fs.clone()).unwrap();
    let log = LogHandle::open_with(&set, zstd_cfg(d.path()), fs, Clock::System, 9).unwrap();
    let mut recs = Vec::new();
    for i in 0..3000 {
        let p = json_line(i);
        recs.push((log.append(&p).unwrap(), p));
    }
    log.flush().unwrap();
    let first: Vec<_> = recs.iter().filter(|r| r.0.segment_index() == 0).collect();
    // The worker holds at segment 0's temp file; a reader maps segment 0's raw file.
    let raw_reader = log.open_reader(SegmentId::new(0)).unwrap();
    assert!(!log.view().catalog()[0].compressed);
    hold.store(false, Ordering::SeqCst);
    let start = Instant::now();
    while log.metrics().compression_backlog_segments > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "not compressed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Give the shard the raw file's removal.
    let raw = d.path().join("segments").join(format!("{:020}.seg", 0));
    while raw.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "raw file not removed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (_, names) = dir_bytes(d.path());
    assert!(
        !names.contains(&format!("{:020}.spare", 0)),
        "a mapped raw file was kept for reuse: {names:?}"
    );
    // The old reader still reads the raw bytes it mapped; a new one reads the .zst.
    for (rid, p) in &first {
        assert_eq!(raw_reader.read_record(*rid).unwrap().payload(), &p[..]);
    }
    drop(raw_reader);
    let r = log.open_reader(SegmentId::new(0)).unwrap();
    for (rid, p) in &first {
        assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..]);
    }
    assert!(log.view().catalog()[0].compressed);
}

#[test]
fn readers_racing_swaps_and_releases_see_their_bytes_or_released_never_an_error() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    // Written raw, so every sealed segment is swapped while the readers read.
    let aof = open(&m, small_cfg(d.path()));
    let recs = Arc::new(fill(&aof, 0, 40));
    aof.close().unwrap();
    drop(aof);
    let aof = Arc::new(open(&m, zstd_cfg(d.path())));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|t| {
            let (aof, recs, stop) = (aof.clone(), recs.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut released, mut i) = (0u64, 0u64, t);
                while !stop.load(Ordering::Relaxed) {
                    let (rid, p) = &recs[i % recs.len()];
                    i += 7919;
                    match aof.open_reader(SegmentId::new(rid.segment_index() as u64)) {
                        Ok(r) => {
                            for _ in 0..2 {
                                assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..]);
                            }
                            ok += 1;
                        }
                        Err(bop_rs::aof2::AofError::Released { .. }) => released += 1,
                        Err(e) => panic!("{rid}: {e}"),
                    }
                }
                (ok, released)
            })
        })
        .collect();
    // Swaps run from the open on; release the head segment by segment meanwhile.
    for seg in 1..20u32 {
        let cut = recs.iter().find(|r| r.0.segment_index() == seg).unwrap().0;
        aof.release_before(cut).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    caught_up(&aof);
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut released) = (0, 0);
    for h in readers {
        let (a, b) = h.join().unwrap();
        ok += a;
        released += b;
    }
    assert!(ok > 0 && released > 0, "ok {ok}, released {released}");
    assert!(aof.flush_metrics().segments_compressed > 0);
}

/// A panic inside a swap (a broken invariant; a test hook injects one) abandons that
/// segment's swap only: no temp file is left, the raw segment stays and reads back,
/// the failure is counted, the worker goes on with the log's other segments and with
/// another log, and closing the log returns.
#[test]
fn a_panicking_swap_is_abandoned_and_the_worker_and_the_close_go_on() {
    init_log();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let set = ShardSet::start(&AofManagerConfig::default()).unwrap();
    let a = LogHandle::open(&set, zstd_cfg(da.path())).unwrap();
    let b = LogHandle::open(&set, zstd_cfg(db.path())).unwrap();
    a.inject_compression_panic();
    let mut recs = Vec::new();
    for i in 0..3000 {
        let p = json_line(i);
        recs.push((a.append(&p).unwrap(), p));
        b.append(&json_line(i)).unwrap();
    }
    a.flush().unwrap();
    b.flush().unwrap();
    let sealed = |l: &LogHandle| l.view().catalog().iter().filter(|s| s.sealed).count();
    assert!(sealed(&a) >= 3 && sealed(&b) >= 3);
    let start = Instant::now();
    loop {
        let (ma, mb) = (a.metrics(), b.metrics());
        if mb.compression_backlog_segments == 0
            && ma.compression_backlog_segments == 0
            && ma.compression_failures == 1
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker stopped: {ma:?} {mb:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let cat = a.view().catalog();
    let raw: Vec<_> = cat.iter().filter(|s| s.sealed && !s.compressed).collect();
    assert_eq!(raw.len(), 1, "the abandoned segment stays raw: {cat:?}");
    assert!(b.view().catalog().iter().all(|s| !s.sealed || s.compressed));
    let (_, names) = dir_bytes(da.path());
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    for (rid, p) in &recs {
        let r = a
            .open_reader(SegmentId::new(rid.segment_index() as u64))
            .unwrap();
        assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..]);
    }
    within(Duration::from_secs(10), "close of the log", move || {
        a.close()
    })
    .expect("a healthy log closes cleanly");
    drop(b);
}
