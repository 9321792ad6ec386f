//! Retention policies end to end: `Size` keeps the directory within the README's
//! formula under a steady writer; `Time` releases a slow log's records once they are a
//! ttl old; what goes never comes back after a reopen.

mod common;

use bop_rs::aof2::config::{RetentionPolicy, SegmentId};
use bop_rs::aof2::{AofError, RecordId};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const SEG: u64 = 64 * 1024;

/// Bytes of every file in the log's directory (the root and `segments/`).
fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    for dir in [root.to_path_buf(), root.join("segments")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            // A file removed since the listing counts for nothing.
            if let Ok(m) = e.unwrap().metadata() {
                if m.is_file() {
                    total += m.len();
                }
            }
        }
    }
    total
}

fn listing(root: &Path) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for dir in [root.to_path_buf(), root.join("segments")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() {
                v.push((e.file_name().to_string_lossy().into_owned(), m.len()));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn size_retention_keeps_the_directory_within_the_formula_under_a_steady_writer() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let limit = 8 * SEG;
    let mut cfg = small_cfg(d.path());
    cfg.retention = RetentionPolicy::Size {
        max_total_bytes: limit,
    };
    let spares = cfg.spare_segments as u64;
    let aof = open(&m, cfg.clone());
    // The README's formula: the limit, plus the active segment, one rolled and waiting
    // for its seal, one sealed and being released, one prepared, the spares, and the
    // release mark (4 KiB, twice while it is replaced).
    let bound = limit + (4 + spares) * SEG + 8192;
    let payload = vec![0x5au8; 3000];
    let mut worst = 0;
    let mut last = RecordId::from_u64(0);
    for i in 0..4000u64 {
        last = aof.append_record(&payload).unwrap();
        if i % 16 == 15 {
            aof.flush().unwrap();
            let bytes = dir_bytes(d.path());
            worst = worst.max(bytes);
            assert!(
                bytes <= bound,
                "{bytes} bytes on disk after {i} records; bound {bound}: {:?}",
                listing(d.path())
            );
        }
    }
    aof.flush().unwrap();
    // 4000 records of 3 KiB is ~12 MiB: most of it was released, oldest first.
    let first = aof.first_record();
    assert!(first.segment_index() > 100, "{first}");
    assert!(aof.flush_metrics().segments_released > 100);
    assert!(matches!(
        aof.open_reader(SegmentId::new(0)),
        Err(AofError::Released { .. })
    ));
    assert_eq!(read_back(&aof, last), payload);
    eprintln!("worst {worst} bytes on disk, bound {bound}");
    drop(aof);
    let aof = open(&m, cfg);
    // Nothing released comes back (retention may release more at open: the last
    // segment is sealed by recovery and counts toward the limit).
    let reopened = aof.first_record();
    assert!(reopened >= first, "{reopened} < {first}");
    // Retention applies from the open on (in the background).
    let start = Instant::now();
    loop {
        let kept: u64 = aof
            .catalog_snapshot()
            .iter()
            .filter(|s| s.sealed)
            .map(|s| s.file_size)
            .sum();
        if kept <= limit {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{kept} bytes of sealed segments kept"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read_back(&aof, last), payload);
}

#[test]
fn time_retention_releases_a_slow_log_once_its_records_are_a_ttl_old() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(d.path());
    cfg.retention = RetentionPolicy::Time { ttl_seconds: 1 };
    let aof = open(&m, cfg.clone());
    // A slow log: a few records, never enough to fill a segment.
    let old: Vec<_> = (0..3)
        .map(|i| aof.append_record(&payload(7, i)).unwrap())
        .collect();
    aof.flush().unwrap();
    assert_eq!(old[0].segment_index(), 0);
    // The active segment is sealed at its max age (the ttl) and released with it.
    let start = Instant::now();
    while aof.first_record().segment_index() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still holding segment 0 after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(start.elapsed() >= Duration::from_millis(900) || old.is_empty());
    assert!(matches!(
        aof.open_reader(SegmentId::new(0)),
        Err(AofError::Released { .. })
    ));
    // New records are kept until they are a ttl old too.
    let fresh = aof.append_record(b"fresh").unwrap();
    aof.flush().unwrap();
    assert_eq!(read_back(&aof, fresh), b"fresh");
    drop(aof);
    let aof = open(&m, cfg);
    assert!(aof.first_record().segment_index() >= 1);
    assert!(matches!(
        aof.open_reader(SegmentId::new(0)),
        Err(AofError::Released { .. })
    ));
}
