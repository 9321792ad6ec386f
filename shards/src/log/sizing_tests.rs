//! Segment sizes, preparation ahead and idle buffers, driven by the fake executor.

use super::sizing::IDLE_NS;
use super::tests::{append, cfg, Fake};
use super::*;
use crate::format::{scan_frames, HeaderState};
use std::sync::atomic::{AtomicU64, Ordering};

const KIB: u64 = 1024;

fn timed_core(c: AofConfig) -> (LogCore, Arc<AtomicU64>) {
    let time = Arc::new(AtomicU64::new(1_000));
    let core = LogCore::new(
        c,
        LogPaths::new(std::path::Path::new("/fake")),
        Clock::Manual(time.clone()),
        7,
        Recovered::default(),
    );
    (core, time)
}

fn small_then_growing() -> AofConfig {
    cfg(|c| {
        c.segment_min_bytes = 64 * KIB;
        c.segment_target_bytes = 512 * KIB;
    })
}

#[test]
fn nothing_is_prepared_at_open_and_the_first_append_gets_a_min_size_file() {
    let (mut c, _) = timed_core(small_then_growing());
    let mut fake = Fake::default();
    fake.drain(&mut c, 0);
    assert!(fake.ops.is_empty(), "I/O at open: {:?}", fake.ops);
    let rid = append(&mut c, &mut fake, &[1u8; 100]);
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert_eq!(rid.segment_index(), 0);
    assert_eq!(fake.files[&0].len() as u64, 64 * KIB);
    // One small record: no second file is prepared ahead.
    assert!(c.prepared.is_empty(), "{:?}", c.prepared);
    assert!(!fake.ops.iter().any(|o| o.starts_with("Create(1)")));
}

#[test]
fn segments_double_toward_the_target_while_they_fill_fast_and_not_when_slow() {
    let (mut c, time) = timed_core(small_then_growing());
    let mut fake = Fake::default();
    let mut sizes = Vec::new();
    while sizes.len() < 6 {
        let rid = append(&mut c, &mut fake, &[2u8; 8 * KIB as usize]);
        let id = u64::from(rid.segment_index());
        if sizes.len() as u64 <= id {
            sizes.push(c.segs.back().unwrap().header.file_size / KIB);
        }
    }
    // The file prepared while a segment fills has the size known then: growth shows
    // one segment later.
    assert_eq!(sizes, [64, 64, 128, 256, 512, 512], "KiB");
    // A segment that took longer than the window to fill asks for no more.
    let (mut c, time2) = timed_core(cfg(|c| {
        c.segment_min_bytes = 64 * KIB;
        c.segment_target_bytes = 512 * KIB;
    }));
    let mut sizes = Vec::new();
    while sizes.len() < 4 {
        let rid = append(&mut c, &mut fake, &[2u8; 8 * KIB as usize]);
        let id = u64::from(rid.segment_index());
        if sizes.len() as u64 <= id {
            sizes.push(c.segs.back().unwrap().header.file_size / KIB);
        }
        time2.fetch_add(sizing::GROW_WINDOW_NS / 4, Ordering::Relaxed);
    }
    assert_eq!(sizes, [64, 64, 64, 64], "KiB");
    drop(time);
}

#[test]
fn an_idle_log_gives_its_buffers_back_and_the_next_append_writes_the_same_bytes() {
    let (mut c, time) = timed_core(small_then_growing());
    let mut fake = Fake::default();
    let a = append(&mut c, &mut fake, b"before the pause");
    c.request_flush_all();
    fake.drain(&mut c, 1_000);
    assert!(!c.segs[0].bufs.is_empty());
    assert!(c.deadline().is_some(), "the idle deadline is armed");
    // Not yet: an append within the idle time keeps them.
    fake.drain(&mut c, 1_000 + IDLE_NS / 2);
    assert!(!c.segs[0].bufs.is_empty());
    fake.drain(&mut c, 1_000 + IDLE_NS);
    assert!(c.segs[0].bufs.is_empty(), "buffers given back");
    assert!(c.pool.is_empty());
    assert_eq!(c.metrics().idle_buffer_releases, 1);
    assert_eq!(c.deadline(), None, "nothing armed while idle");
    // Back from idle: the partly filled block is rebuilt; both records read back.
    time.store(2 * IDLE_NS, Ordering::Relaxed);
    let b = append(&mut c, &mut fake, b"after the pause");
    c.request_flush_all();
    fake.drain(&mut c, 2 * IDLE_NS);
    assert!(is_durable_rid(&c, b));
    let img = &fake.files[&0];
    let HeaderState::Valid(_, seed) = SegmentHeader::decode(&img[..64]).unwrap() else {
        panic!("no header")
    };
    let scan = scan_frames(seed, img, img.len() as u64 - 4096);
    assert_eq!(scan.record_count, 2);
    assert_eq!(u64::from(scan.last_record_offset), b.as_u64() & 0xffff_ffff);
    assert!(a < b);
}

fn is_durable_rid(c: &LogCore, rid: RecordId) -> bool {
    rid.as_u64() < c.durable_pos()
}
