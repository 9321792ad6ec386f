//! The pace of zero-writing a new segment file (`zero_pace.rs`), driven by the fake
//! executor on a manual clock.

use super::sizing_tests::timed_core;
use super::tests::{cfg, Fake};
use super::*;
use crate::buffer::PREP_CHUNK;
use std::sync::atomic::Ordering;

const KIB: u64 = 1024;

/// Bytes of each zero-write the fake executor ran since op `from` (the log's data is
/// in segment 0, files being prepared have later ids).
fn zero_writes(fake: &Fake, from: usize) -> Vec<u64> {
    zero_writes_to(fake, from, "0")
}

fn zero_writes_to(fake: &Fake, from: usize, data_seg: &str) -> Vec<u64> {
    fake.ops[from..]
        .iter()
        .filter_map(|o| {
            // "Write(seg @off +len)" of a file being prepared (the data file is 0).
            let rest = o.strip_prefix("Write(")?;
            let (seg, tail) = rest.split_once(' ')?;
            let len: u64 = tail.split('+').nth(1)?.trim_end_matches(')').parse().ok()?;
            (seg != data_seg).then_some(len)
        })
        .collect()
}

/// A busy log of 4 KiB records, each committed on its own (as `flush_until` after each
/// append), 1 MiB segments: the next file is zero-written in small pieces, one per
/// couple of commits, and is ready before the active segment fills (no append waits
/// for it, no piece is ever a full 1 MiB step).
#[test]
fn a_committing_log_zero_writes_its_next_file_in_small_pieces_and_never_waits() {
    let (mut c, time) = timed_core(cfg(|c| {
        c.segment_min_bytes = 1 << 20;
        c.segment_target_bytes = 1 << 20;
    }));
    let mut fake = Fake::default();
    let mut waits = 0;
    let mut from = None;
    for i in 0..1200u64 {
        let rid = loop {
            match c.append(&[9u8; 4096]) {
                Ok(a) => break a.rid,
                Err(AofError::WouldBlock(_)) => {
                    waits += u64::from(i > 0);
                    fake.drain(&mut c, time.load(Ordering::Relaxed));
                }
                Err(e) => panic!("{e}"),
            }
        };
        if i == 0 {
            from = Some(fake.ops.len());
        }
        c.request_flush(rid.as_u64() + 1);
        fake.drain(&mut c, time.load(Ordering::Relaxed));
        time.fetch_add(100_000, Ordering::Relaxed); // 100 us per commit
    }
    assert_eq!(waits, 0, "an append waited for its segment's file");
    let zeros = zero_writes(&fake, from.unwrap());
    assert!(zeros.len() > 20, "{zeros:?}");
    let max = *zeros.iter().max().unwrap();
    assert!(
        max <= 64 * KIB,
        "a zero piece of {max} bytes while committing"
    );
    assert!(c.metrics().segments_prepared >= 4);
}

/// A busy log's next file is zeroed spread over the whole active segment (with a
/// margin), not crowded into its first commits: it is ready only past 40% of the
/// segment, yet before it fills.
#[test]
fn a_busy_logs_zeros_spread_over_the_segment_filling_up() {
    let (mut c, time) = timed_core(cfg(|c| {
        c.segment_min_bytes = 1 << 20;
        c.segment_target_bytes = 1 << 20;
    }));
    let mut fake = Fake::default();
    let mut ready_at = std::collections::BTreeMap::new();
    for _ in 0..1500u64 {
        let rid = super::tests::append(&mut c, &mut fake, &[9u8; 4096]);
        c.request_flush(rid.as_u64() + 1);
        fake.drain(&mut c, time.load(Ordering::Relaxed));
        time.fetch_add(100_000, Ordering::Relaxed);
        let s = c.segs.back().unwrap();
        if rid.segment_index() >= 2 && c.has_prepared_segment() {
            ready_at
                .entry(rid.segment_index())
                .or_insert(s.appended_end as f64 / s.capacity as f64);
        }
    }
    assert!(ready_at.len() >= 3, "{ready_at:?}");
    for (seg, at) in &ready_at {
        assert!(
            (0.4..0.95).contains(at),
            "segment {seg}: its next file was ready at {at:.2} of it"
        );
    }
}

/// A log that stops committing: the zeros trickle in, 64 KiB a millisecond (the shard
/// is given a deadline for each), never a burst.
#[test]
fn a_quiet_logs_next_file_trickles_in() {
    let (mut c, time) = timed_core(cfg(|c| {
        c.segment_min_bytes = 1 << 20;
        c.segment_target_bytes = 1 << 20;
    }));
    let mut fake = Fake::default();
    // A quarter of the first segment, so its next file is prepared ahead.
    for _ in 0..70 {
        super::tests::append(&mut c, &mut fake, &[1u8; 4096]);
    }
    c.request_flush_all();
    let mut now = time.load(Ordering::Relaxed);
    fake.drain(&mut c, now);
    let from = fake.ops.len();
    // Quiet from here on: 21 ms later, one piece per millisecond.
    for _ in 0..40 {
        now += 1_000_000;
        time.store(now + 20_000_000, Ordering::Relaxed);
        fake.drain(&mut c, now + 20_000_000);
        if c.has_prepared_segment() {
            break;
        }
        let d = c.deadline().expect("a deadline for the next piece");
        assert!(d <= now + 21_000_000, "{d}");
    }
    assert!(c.has_prepared_segment(), "the file was never finished");
    let zeros = zero_writes(&fake, from);
    assert!(zeros.iter().all(|&z| z <= 64 * KIB), "{zeros:?}");
}

/// An append waiting for the file: full 1 MiB steps, never more than the shared zero
/// chunk in one write.
#[test]
fn an_append_waiting_for_the_file_gets_full_steps() {
    let (mut c, time) = timed_core(cfg(|c| {
        c.segment_min_bytes = 4 << 20;
        c.segment_target_bytes = 4 << 20;
        c.segment_max_bytes = 8 << 20;
    }));
    let mut fake = Fake::default();
    assert!(c.append(b"first").is_err(), "waits for its first file");
    fake.drain(&mut c, time.load(Ordering::Relaxed));
    let zeros = zero_writes_to(&fake, 0, "none");
    assert_eq!(zeros, vec![PREP_CHUNK as u64; 4]);
}
