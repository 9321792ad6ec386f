//! Segment sizes, preparation ahead and idle buffers, driven by the fake executor.

use super::sizing::IDLE_NS;
use super::tests::{append, cfg, Fake};
use super::*;
use crate::format::{scan_frames, HeaderState};
use std::sync::atomic::{AtomicU64, Ordering};

const KIB: u64 = 1024;

pub(super) fn timed_core(c: AofConfig) -> (LogCore, Arc<AtomicU64>) {
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
fn with_preallocate_segments_the_first_file_is_prepared_at_open() {
    let (mut c, _) = timed_core(cfg(|c| {
        c.segment_min_bytes = 64 * KIB;
        c.segment_target_bytes = 512 * KIB;
        c.preallocate_segments = true;
    }));
    let mut fake = Fake::default();
    fake.drain(&mut c, 0);
    assert!(c.has_prepared_segment(), "nothing prepared: {:?}", fake.ops);
    assert_eq!(fake.files[&0].len() as u64, 64 * KIB);
    // The first append enters it at once: no WouldBlock, no I/O before it.
    let ops_before = fake.ops.len();
    let a = c.append(&[1u8; 100]).expect("the file is ready");
    assert_eq!(a.rid.segment_index(), 0);
    assert_eq!(fake.ops.len(), ops_before);
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert!(tests::is_durable(&c, a.rid));
    // Only the first file: nothing further is prepared ahead for one small record.
    assert!(c.prepared.is_empty(), "{:?}", c.prepared);
}

/// Sizes of the first `n` segments of a log of 64 KiB..512 KiB segments appending 8 KiB
/// records, the clock moving `step` ns per record.
fn sizes(n: usize, step: u64) -> Vec<u64> {
    let (mut c, time) = timed_core(small_then_growing());
    let mut fake = Fake::default();
    let mut sizes = Vec::new();
    while sizes.len() < n {
        let rid = append(&mut c, &mut fake, &[2u8; 8 * KIB as usize]);
        if sizes.len() as u64 <= u64::from(rid.segment_index()) {
            sizes.push(c.segs.back().unwrap().header.file_size / KIB);
        }
        time.fetch_add(step, Ordering::Relaxed);
    }
    sizes
}

#[test]
fn segments_grow_toward_the_target_as_the_write_rate_asks() {
    // Eight records per 64 KiB segment. Instantly full: the target next (the file
    // prepared while the first filled was sized before, so it shows one segment later).
    assert_eq!(sizes(4, 0), [64, 64, 512, 512], "KiB");
    // 64 KiB in 2 s fills 320 KiB in the window: 512 KiB next.
    assert_eq!(sizes(3, sizing::GROW_WINDOW_NS / 40), [64, 64, 512], "KiB");
    // 64 KiB in 8 s: 80 KiB per window, 128 KiB next.
    assert_eq!(
        sizes(4, sizing::GROW_WINDOW_NS / 10),
        [64, 64, 128, 128],
        "KiB"
    );
    // Slower than a segment per window: the minimum stays.
    assert_eq!(
        sizes(4, sizing::GROW_WINDOW_NS / 4),
        [64, 64, 64, 64],
        "KiB"
    );
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

#[test]
fn a_grown_log_reuses_its_buffers_instead_of_allocating_new_ones() {
    // 64 KiB segments (64 KiB buffers) grow to 512 KiB ones (512 KiB buffers): the
    // small segments' spare buffers must not keep the grown ones out of the pool.
    let (mut c, _) = timed_core(small_then_growing());
    let mut fake = Fake::default();
    let mut allocated_at = Vec::new();
    let mut seg = 0;
    while seg < 10 {
        let rid = append(&mut c, &mut fake, &[3u8; 8 * KIB as usize]);
        c.request_flush_all();
        fake.drain(&mut c, 0);
        assert!(is_durable_rid(&c, rid));
        if rid.segment_index() != seg {
            seg = rid.segment_index();
            allocated_at.push(c.metrics().buffers_allocated);
        }
    }
    let grown = c.segs.back().unwrap().buf_size;
    assert_eq!(grown as u64, 512 * KIB);
    assert!(c.pool.iter().all(|b| b.len() == grown), "stale spares kept");
    // From the third 512 KiB segment on, every buffer is a reused one.
    let steady = &allocated_at[4..];
    assert!(
        steady.windows(2).all(|w| w[0] == w[1]),
        "buffers allocated per segment start: {allocated_at:?}"
    );
}

#[test]
fn a_busy_new_log_ramps_by_doubling_with_its_zeros_paced() {
    // 64 KiB to 1 MiB segments, 4 KiB records committed one by one, 100 us apart: the
    // rate asks for the target at once, but each file prepared ahead is at most twice
    // the active segment, so its zeros go in paced pieces (never the 1 MiB steps of a
    // file falling behind) and no append waits for a file after the first.
    let (mut c, time) = timed_core(cfg(|c| {
        c.segment_min_bytes = 64 * KIB;
        c.segment_target_bytes = 1024 * KIB;
    }));
    let mut fake = Fake::default();
    let mut sizes = Vec::new();
    let mut waits = 0;
    while sizes.len() < 8 {
        let now = time.load(Ordering::Relaxed);
        let rid = loop {
            match c.append(&[4u8; 4000]) {
                Ok(a) => break a.rid,
                Err(AofError::WouldBlock(crate::error::WouldBlockKind::Rollover)) => {
                    waits += 1;
                    fake.drain(&mut c, now);
                }
                Err(e) => panic!("append failed: {e}"),
            }
        };
        if sizes.len() as u64 <= u64::from(rid.segment_index()) {
            sizes.push(c.segs.back().unwrap().header.file_size / KIB);
        }
        c.request_flush_all();
        fake.drain(&mut c, now);
        time.fetch_add(100_000, Ordering::Relaxed);
    }
    assert_eq!(sizes, [64, 64, 128, 256, 512, 1024, 1024, 1024], "KiB");
    assert_eq!(waits, 1, "only the first append waits for its file");
    // Zero pieces: writes into a file between its Create and its Rename into place.
    let mut preparing = std::collections::BTreeSet::new();
    let mut largest = 0;
    for op in &fake.ops {
        if let Some(id) = op.strip_prefix("Create(") {
            preparing.insert(id.trim_end_matches(')').to_string());
        } else if let Some(rest) = op.strip_prefix("Write(") {
            let (id, n) = rest.split_once(' ').unwrap();
            if preparing.contains(id) {
                let n: u64 = n
                    .rsplit_once('+')
                    .unwrap()
                    .1
                    .trim_end_matches(')')
                    .parse()
                    .unwrap();
                largest = largest.max(n);
            }
        } else if op.starts_with("Rename(") {
            preparing.retain(|id| !op.contains(&format!("{:020}.seg", id.parse::<u64>().unwrap())));
        }
    }
    assert!(
        largest > 0 && largest < 256 * KIB,
        "largest zero piece {largest} bytes"
    );
}
