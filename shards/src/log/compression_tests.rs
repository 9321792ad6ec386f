//! The core's side of compression, driven by the fake executor of `tests.rs`: which
//! segment is compressed next, what a finished swap changes, what a failure does.

use super::tests::{append, cfg, Fake};
use super::*;
use crate::config::Compression;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A `Compression::Zstd` log with `n` sealed 64 KiB segments and an active one, on a
/// clock the test moves.
fn log(n: usize, f: impl FnOnce(&mut AofConfig)) -> (LogCore, Fake, Arc<AtomicU64>) {
    let time = Arc::new(AtomicU64::new(1_000));
    let mut c = LogCore::new(
        cfg(|c| {
            c.compression = Compression::Zstd;
            f(c);
        }),
        LogPaths::new(Path::new("/fake")),
        Clock::Manual(time.clone()),
        7,
        Recovered::default(),
    );
    let mut fake = Fake::default();
    while c.sealed_segments().len() < n {
        append(&mut c, &mut fake, &[7u8; 12 * 1024]);
        c.request_flush_all();
        fake.drain(&mut c, 0);
    }
    (c, fake, time)
}

#[test]
fn sealed_segments_are_compressed_oldest_first_one_at_a_time() {
    let (mut c, _, _) = log(3, |_| {});
    assert!(c.compression_wanted());
    let j = c.next_compression().unwrap();
    assert_eq!(j.segment, 0);
    assert_eq!(j.raw, Path::new("/fake/segments/00000000000000000000.seg"));
    assert_eq!(
        j.temp,
        Path::new("/fake/segments/00000000000000000000.zst.tmp")
    );
    assert_eq!(
        j.target,
        Path::new("/fake/segments/00000000000000000000.zst")
    );
    assert!(
        !c.compression_wanted() && c.next_compression().is_none(),
        "one at a time"
    );
    assert_eq!(c.metrics().compression_backlog_segments, 3);
    assert_eq!(c.compression_done(0, 5000), Swapped::Kept);
    let s = c.sealed_segments()[0];
    assert!(s.compressed);
    assert_eq!(s.disk_bytes, 5000);
    let cat = c.catalog();
    assert!(cat[0].compressed && cat[0].disk_bytes == 5000 && cat[0].file_size == 64 << 10);
    assert!(!cat[1].compressed && cat[1].disk_bytes == 64 << 10);
    let m = c.metrics();
    assert_eq!(m.segments_compressed, 1);
    assert_eq!(
        (m.compression_raw_bytes, m.compression_disk_bytes),
        (64 << 10, 5000)
    );
    assert_eq!(m.compression_backlog_segments, 2);
    assert_eq!(m.compression_backlog_bytes, 2 * (64 << 10));
    assert_eq!(c.next_compression().unwrap().segment, 1);
}

#[test]
fn the_raw_file_goes_after_the_swap_into_the_spare_pool_unless_someone_maps_it() {
    let (mut c, mut fake, _) = log(3, |_| {});
    for id in 0..2 {
        let j = c.next_compression().unwrap();
        assert_eq!(j.segment, id);
        drop(j); // the worker's pin goes with its job
        c.compression_done(id, 100);
    }
    // A reader maps segment 1's raw file.
    let reader = c.pin(1);
    let from = fake.ops.len();
    fake.drain(&mut c, 0);
    assert_eq!(
        fake.ops[from..],
        [
            "Retire(/fake/segments/00000000000000000000.seg -> /fake/segments/00000000000000000000.spare)",
            "SyncDir(/fake/segments)",
            "Unlink(/fake/segments/00000000000000000001.seg)",
            "SyncDir(/fake/segments)",
        ]
    );
    drop(reader);
    assert_eq!(c.metrics().segment_files_removed, 2);
}

#[test]
fn a_failed_swap_keeps_the_raw_segment_and_is_retried_later() {
    let (mut c, _, time) = log(2, |_| {});
    let j = c.next_compression().unwrap();
    let e = io::Error::from_raw_os_error(libc::ENOSPC);
    c.compression_failed(j.segment, "write", &j.temp, &e);
    assert_eq!(c.metrics().compression_failures, 1);
    assert!(!c.sealed_segments()[0].compressed);
    assert!(!c.compression_wanted(), "held back");
    time.fetch_add(COMPRESS_RETRY_NS - 1, Ordering::Relaxed);
    assert!(c.next_compression().is_none());
    time.fetch_add(1, Ordering::Relaxed);
    assert_eq!(c.next_compression().unwrap().segment, 0, "retried");
}

#[test]
fn segments_being_released_are_not_compressed_and_a_swap_racing_a_release_is_an_orphan() {
    let (mut c, mut fake, _) = log(3, |_| {});
    let j = c.next_compression().unwrap();
    assert_eq!(j.segment, 0);
    // Segments 0 and 1 are released while 0 is compressed.
    let first_of_2 = RecordId::from_parts(2, crate::format::HEADER_LEN as u32);
    let t = c.request_release(first_of_2).unwrap();
    fake.drain(&mut c, 0);
    assert!(c.release_outcome(&t).unwrap().is_ok());
    assert_eq!(c.compression_done(0, 100), Swapped::Released);
    assert_eq!(c.metrics().segments_compressed, 0);
    assert_eq!(c.next_compression().unwrap().segment, 2, "1 was released");
}

#[test]
fn a_close_stops_new_swaps_and_waits_for_the_running_one() {
    let (mut c, mut fake, _) = log(2, |_| {});
    let j = c.next_compression().unwrap();
    c.begin_close();
    fake.drain(&mut c, 0);
    assert!(!c.compression_continues(), "the worker stops");
    assert!(!c.is_drained(), "the close waits for the swap to stop");
    c.compression_stopped(j.segment);
    fake.drain(&mut c, 0);
    assert!(c.is_drained());
    assert!(c.next_compression().is_none());
}

#[test]
fn size_retention_counts_compressed_segments_by_their_bytes_on_disk() {
    // A limit of two raw segments: with each compressed to 4 KiB as soon as it is
    // sealed, six and more are kept.
    let (mut c, mut fake, _) = log(2, |c| {
        c.retention = crate::config::RetentionPolicy::Size {
            max_total_bytes: 2 * 64 * 1024,
        }
    });
    for _ in 0..200 {
        while let Some(j) = c.next_compression() {
            c.compression_done(j.segment, 4096);
        }
        if c.sealed_segments().len() >= 8 {
            break;
        }
        append(&mut c, &mut fake, &[7u8; 12 * 1024]);
        c.request_flush_all();
        fake.drain(&mut c, 0);
    }
    assert_eq!(c.first_kept(), 0, "nothing released");
    assert_eq!(c.sealed_segments().len(), 8);
    // Raw segments from here on: the oldest (compressed) ones go until the bytes on
    // disk fit again.
    for _ in 0..100 {
        append(&mut c, &mut fake, &[7u8; 12 * 1024]);
        c.request_flush_all();
        fake.drain(&mut c, 0);
    }
    let disk: u64 = c.sealed_segments().iter().map(|s| s.disk_bytes).sum();
    assert!(disk <= 2 * 64 * 1024, "{disk}");
    assert!(c.first_kept() > 0);
}
