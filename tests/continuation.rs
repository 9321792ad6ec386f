//! A log opened often stays small: after a clean close, the next session continues the
//! last segment instead of starting a new file (a command-line tool, a cron job or a
//! test that opens a log, appends a little and closes it once left a whole segment
//! file behind each time: 300 cycles left 300 files and 300 MiB).

mod common;
use bop_rs::aof2::config::{AofConfig, SegmentId};
use bop_rs::aof2::reader::{SealedSegmentStream, SegmentCursor};
use bop_rs::aof2::{Aof, RecordId};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn default_cfg(root: &Path) -> AofConfig {
    let mut c = AofConfig::default();
    c.root_dir = root.to_path_buf();
    c
}

fn record(i: u64) -> Vec<u8> {
    let mut p = format!("cycle {i}: ").into_bytes();
    p.resize(100, b'.');
    p
}

/// (files, bytes) in the segment directory.
fn segment_dir(root: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(root.join("segments")).unwrap() {
        let e = e.unwrap();
        n += 1;
        bytes += e.metadata().unwrap().len();
    }
    (n, bytes)
}

fn read_all(aof: &Aof) -> Vec<(RecordId, Vec<u8>)> {
    let mut out = Vec::new();
    for s in aof.catalog_snapshot() {
        let mut c = SegmentCursor::new(aof.open_reader(SegmentId::new(s.segment_id)).unwrap());
        while let Some(r) = c.next().unwrap() {
            out.push((r.record_id(), r.payload().to_vec()));
        }
    }
    out
}

/// Reads `stream` into `seen` until it holds `n` records.
fn read_until(stream: &mut SealedSegmentStream, seen: &mut Vec<(RecordId, Vec<u8>)>, n: usize) {
    while seen.len() < n {
        let mut c = stream
            .next_segment_blocking()
            .unwrap()
            .unwrap()
            .into_cursor();
        while let Some(r) = c.next().unwrap() {
            seen.push((r.record_id(), r.payload().to_vec()));
        }
    }
}

/// 300 open / append one 100-byte record / close cycles with the default
/// configuration leave one segment file (at most 8 MiB in the directory), and the
/// directory never holds more than a few files, so opening does not cost more with
/// every past session. Every record reads back, in order.
#[test]
fn a_log_opened_often_stays_small() {
    let m = manager();
    let d = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    let (mut early, mut late) = (Duration::ZERO, Duration::ZERO);
    for i in 0..300u64 {
        let t = Instant::now();
        let aof = open(&m, default_cfg(d.path()));
        if i < 30 {
            early += t.elapsed();
        } else if i >= 270 {
            late += t.elapsed();
        }
        let rid = aof.append_record(&record(i)).unwrap();
        want.push((rid, record(i)));
        if i % 2 == 0 {
            aof.flush_until(rid).unwrap();
        }
        drop(aof);
        let (files, _) = segment_dir(d.path());
        assert!(
            files <= 3,
            "cycle {i}: {files} files in the segment directory"
        );
    }
    let (files, bytes) = segment_dir(d.path());
    println!(
        "300 cycles: {files} file(s), {bytes} bytes; open {:?} (first 30) vs {:?} (last 30)",
        early / 30,
        late / 30
    );
    assert!(bytes <= 8 << 20, "{bytes} bytes in the segment directory");
    let aof = open(&m, default_cfg(d.path()));
    assert_eq!(read_all(&aof), want);
    assert_eq!(
        aof.flush_metrics().segments_continued,
        0,
        "nothing appended yet"
    );
    let rid = aof.append_record(b"one more").unwrap();
    aof.flush_until(rid).unwrap();
    assert_eq!(rid.segment_index(), want[0].0.segment_index());
    assert_eq!(aof.flush_metrics().segments_continued, 1);
}

/// A record that does not fit the rest of the last segment starts a new one (the old
/// one stays sealed as it was); a stream and a follower made before a continuation
/// see its new records and its new seal, without skipping or repeating.
#[test]
fn streams_and_followers_follow_a_continued_segment() {
    let m = manager();
    let d = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    {
        let aof = open(&m, default_cfg(d.path()));
        for i in 0..5 {
            want.push((aof.append_record(&record(i)).unwrap(), record(i)));
        }
    }
    let aof = open(&m, default_cfg(d.path()));
    let seg = want[0].0.segment_index() as u64;
    let mut stream = SealedSegmentStream::new(&aof).unwrap();
    let mut follower = aof.tail_follower();
    let mut seen = Vec::new();
    // Everything there is, then the stream waits at the end of the sealed segment.
    read_until(&mut stream, &mut seen, want.len());
    for i in 5..10 {
        want.push((aof.append_record(&record(i)).unwrap(), record(i)));
    }
    aof.flush().unwrap();
    assert_eq!(want[9].0.segment_index() as u64, seg, "continued");
    read_until(&mut stream, &mut seen, want.len());
    assert_eq!(seen, want, "no record skipped or repeated");
    // A record larger than the rest of the segment rolls it: the follower reports the
    // continued segment's new seal.
    let big = vec![7u8; 1_100_000];
    let rid = aof.append_record(&big).unwrap();
    aof.flush_until(rid).unwrap();
    assert!(rid.segment_index() as u64 > seg);
    assert_eq!(
        follower.next_sealed_segment_blocking(),
        Some(SegmentId::new(seg))
    );
    drop(aof);
    // A reopen whose first record does not fit the last segment starts a new one.
    let aof = open(&m, default_cfg(d.path()));
    let last = aof.catalog_snapshot().last().unwrap().segment_id;
    let rid = aof.append_record(&vec![1u8; 1_048_000]).unwrap();
    aof.flush_until(rid).unwrap();
    assert!(rid.segment_index() as u64 > last);
    assert_eq!(aof.flush_metrics().segments_continued, 0);
    assert_eq!(read_back(&aof, want[3].0), want[3].1);
    assert_eq!(read_back(&aof, rid).len(), 1_048_000);
}
