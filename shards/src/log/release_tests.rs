//! Releasing a log's head, driven by the fake executor of `tests.rs`.

use super::release::MARK_KEY;
use super::removal::RELEASE_RETRY_NS;
use super::tests::{append, cfg, core, Fake};
use super::*;
use crate::release_mark::ReleaseMark;
use std::sync::atomic::{AtomicU64, Ordering};

/// A log with `n` sealed 64 KiB segments (four 12 KiB records each) and an active one
/// holding one record; returns the core, the executor and each segment's record ids.
fn log_with_sealed(n: usize, spares: usize) -> (LogCore, Fake, Vec<Vec<RecordId>>) {
    let mut c = core(cfg(|c| c.spare_segments = spares));
    let mut fake = Fake::default();
    let mut segs: Vec<Vec<RecordId>> = Vec::new();
    while segs.len() <= n {
        let rid = append(&mut c, &mut fake, &[7u8; 12 * 1024]);
        let seg = rid.segment_index() as usize;
        if segs.len() <= seg {
            segs.push(Vec::new());
        }
        segs[seg].push(rid);
    }
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert_eq!(c.sealed_segments().len(), n);
    (c, fake, segs)
}

fn ops_from(fake: &Fake, from: usize) -> Vec<String> {
    fake.ops[from..].to_vec()
}

#[test]
fn a_release_makes_the_mark_durable_first_then_removes_oldest_first() {
    let (mut c, mut fake, segs) = log_with_sealed(3, 1);
    // Before the first record of segment 2: segments 0 and 1 go, 2 and the active stay.
    let t = c.request_release(segs[2][0]).unwrap();
    assert_eq!((t.first_kept, t.released), (2, 2));
    assert!(c.release_outcome(&t).is_none(), "not durable yet");
    assert!(
        c.check_kept(0).is_ok(),
        "readable until the mark is durable"
    );
    let start = fake.ops.len();
    fake.drain(&mut c, 0);
    assert_eq!(c.release_outcome(&t).unwrap().unwrap(), 2);
    let ops = ops_from(&fake, start);
    let expect = [
        "Unlink(/fake/RELEASED.tmp)".to_string(),
        format!("Create({MARK_KEY})"),
        format!("Write({MARK_KEY} @0 +4096)"),
        format!("Sync({MARK_KEY})"),
        format!("Close({MARK_KEY})"),
        "Rename(/fake/RELEASED.tmp -> /fake/RELEASED)".into(),
        "SyncDir(/fake)".into(),
        // Oldest first, each removal durable before the next; the pool holds one.
        "Retire(/fake/segments/00000000000000000000.seg -> /fake/segments/00000000000000000000.spare)".into(),
        "SyncDir(/fake/segments)".into(),
        "Unlink(/fake/segments/00000000000000000001.seg)".into(),
        "SyncDir(/fake/segments)".into(),
    ];
    assert_eq!(ops, expect);
    let mark = ReleaseMark::decode(&fake.files[&MARK_KEY]).unwrap();
    assert_eq!(
        mark,
        ReleaseMark {
            first_segment: 2,
            first_record_index: segs[0].len() as u64 + segs[1].len() as u64,
        }
    );
    assert!(matches!(
        c.check_kept(1),
        Err(AofError::Released {
            segment: 1,
            first_kept: 2,
            ..
        })
    ));
    assert!(c.check_kept(2).is_ok());
    assert_eq!(c.first_record(), segs[2][0]);
    assert_eq!(c.sealed_segments()[0].header.segment_id, 2);
    let m = c.metrics();
    assert_eq!((m.segments_released, m.segment_files_removed), (2, 2));
    // Idempotent: asking again releases nothing and needs no I/O.
    let again = c.request_release(segs[2][0]).unwrap();
    assert_eq!(c.release_outcome(&again).unwrap().unwrap(), 0);
    assert!(c.poll(0).is_empty());
}

#[test]
fn the_active_segment_is_never_released() {
    let (mut c, mut fake, segs) = log_with_sealed(2, 2);
    let active = *segs[2].last().unwrap();
    // Past every record: the sealed ones go, the active one (and its record) stays.
    let t = c
        .request_release(RecordId::from_u64(active.as_u64() + 1))
        .unwrap();
    assert_eq!((t.first_kept, t.released), (2, 2));
    fake.drain(&mut c, 0);
    assert_eq!(c.release_outcome(&t).unwrap().unwrap(), 2);
    assert!(c.check_kept(2).is_ok());
    assert_eq!(c.first_record().segment_index(), 2);
    // Past the tail is an error, not a release.
    let past = RecordId::from_parts(9, 64);
    assert!(matches!(
        c.request_release(past),
        Err(AofError::RecordNotFound { .. })
    ));
}

#[test]
fn a_pinned_file_is_unlinked_never_kept_for_reuse() {
    let (mut c, mut fake, segs) = log_with_sealed(2, 2);
    let pin = c.pin(0);
    let t = c.request_release(segs[2][0]).unwrap();
    let start = fake.ops.len();
    fake.drain(&mut c, 0);
    assert_eq!(c.release_outcome(&t).unwrap().unwrap(), 2);
    let ops = ops_from(&fake, start);
    assert!(
        ops.contains(&"Unlink(/fake/segments/00000000000000000000.seg)".to_string()),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|o| o.ends_with("00000000000000000001.spare)")),
        "{ops:?}"
    );
    drop(pin);
}

#[test]
fn a_failed_mark_loses_nothing_poisons_nothing_and_is_retried() {
    let (mut c, mut fake, segs) = log_with_sealed(2, 2);
    fake.fail_creates = true;
    let t = c.request_release(segs[1][0]).unwrap();
    fake.drain(&mut c, 0);
    let e = c.release_outcome(&t).unwrap().unwrap_err();
    assert!(e.to_string().contains("RELEASED"), "{e}");
    assert!(c.check_kept(0).is_ok(), "nothing was released");
    assert!(c.check_open().is_ok(), "the log is not poisoned");
    assert_eq!(c.metrics().release_failures, 1);
    // Appends and syncs go on.
    let rid = append(&mut c, &mut fake, b"still writing");
    c.request_flush_all();
    fake.fail_creates = false;
    fake.drain(&mut c, 0);
    assert!(rid.as_u64() < c.durable_pos());
    assert!(c.check_kept(0).is_ok(), "not retried before the pause");
    assert_eq!(c.release_deadline(), Some(RELEASE_RETRY_NS + 1_000));
    fake.drain(&mut c, RELEASE_RETRY_NS + 1_000);
    assert!(matches!(c.check_kept(0), Err(AofError::Released { .. })));
    let t2 = c.request_release(segs[1][0]).unwrap();
    assert_eq!(c.release_outcome(&t2).unwrap().unwrap(), 0);
}

fn split_core(c: AofConfig) -> (LogCore, Arc<AtomicU64>, Arc<AtomicU64>) {
    let wall = Arc::new(AtomicU64::new(1_000_000 * NS));
    let mono = Arc::new(AtomicU64::new(1_000));
    let core = LogCore::new(
        c,
        LogPaths::new(std::path::Path::new("/fake")),
        Clock::Split {
            wall: wall.clone(),
            mono: mono.clone(),
        },
        7,
        Recovered::default(),
    );
    (core, wall, mono)
}

const NS: u64 = 1_000_000_000;

/// Appends 12 KiB records until `n` more segments are sealed (the last record opens
/// the next one), then makes them durable.
fn seal_segments(c: &mut LogCore, fake: &mut Fake, n: usize, now: u64) {
    let mut first = None;
    loop {
        let rid = loop {
            match c.append(&[1u8; 12 * 1024]) {
                Ok(a) => break a.rid,
                Err(AofError::WouldBlock(_)) => fake.drain(c, now),
                Err(e) => panic!("{e}"),
            }
        };
        let seg = rid.segment_index() as usize;
        if seg >= *first.get_or_insert(seg) + n {
            break;
        }
    }
    c.request_flush_all();
    fake.drain(c, now);
}

#[test]
fn size_retention_keeps_the_sealed_files_within_the_limit() {
    let limit = 200 * 1024;
    let mut c = core(cfg(|c| {
        c.retention = crate::config::RetentionPolicy::Size {
            max_total_bytes: limit,
        }
    }));
    let mut fake = Fake::default();
    for round in 0..6 {
        seal_segments(&mut c, &mut fake, 8 + round * 3, 0);
        let kept: u64 = c.sealed_segments().iter().map(|s| s.header.file_size).sum();
        assert!(
            kept <= limit,
            "round {round}: {kept} bytes of sealed files kept"
        );
        assert!(
            kept + 64 * 1024 > limit,
            "no more is released than the limit needs"
        );
    }
    assert!(c.metrics().segments_released >= 10);
    assert!(c.check_kept(0).is_err());
}

#[test]
fn time_retention_ignores_wall_clock_steps_and_seals_a_slow_log() {
    let (mut c, wall, mono) = split_core(cfg(|c| {
        c.retention = crate::config::RetentionPolicy::Time { ttl_seconds: 10 };
    }));
    let mut fake = Fake::default();
    let t0 = mono.load(Ordering::Relaxed);
    seal_segments(&mut c, &mut fake, 2, t0);
    assert_eq!(c.sealed_segments().len(), 2);
    // The wall clock jumps a day ahead: nothing goes early.
    wall.fetch_add(86_400 * NS, Ordering::Relaxed);
    mono.store(t0 + 5 * NS, Ordering::Relaxed);
    fake.drain(&mut c, t0 + 5 * NS);
    assert_eq!(c.metrics().segments_released, 0, "released early");
    // Ten seconds after they were sealed, they go (and the shard was told when).
    let d = c.deadline().expect("a retention deadline");
    assert!(d <= t0 + 10 * NS + 1, "{d}");
    mono.store(t0 + 10 * NS, Ordering::Relaxed);
    fake.drain(&mut c, t0 + 10 * NS);
    // The two sealed ones, and the active one (its record is as old): sealed at its
    // max age (the ttl by default), then released with them.
    assert_eq!(c.metrics().segments_released, 3);
    // The wall clock jumps back a day: a segment sealed now still goes after the ttl.
    wall.fetch_sub(2 * 86_400 * NS, Ordering::Relaxed);
    let t1 = t0 + 10 * NS;
    seal_segments(&mut c, &mut fake, 1, t1);
    let before = c.metrics().segments_released;
    mono.store(t1 + 11 * NS, Ordering::Relaxed);
    fake.drain(&mut c, t1 + 11 * NS);
    assert!(c.metrics().segments_released > before, "never released");
    // A slow log: one record, then nothing. Its segment is sealed at its max age (the
    // ttl by default), when its record is a ttl old, and so released at once.
    let t2 = t1 + 11 * NS;
    let rid = append(&mut c, &mut fake, b"lonely");
    c.request_flush_all();
    fake.drain(&mut c, t2);
    let seg = u64::from(rid.segment_index());
    let d = c.deadline().expect("the max-age deadline");
    assert!(d <= t2 + 10 * NS, "{d}");
    mono.store(t2 + 10 * NS - 1, Ordering::Relaxed);
    fake.drain(&mut c, t2 + 10 * NS - 1);
    assert!(
        c.segs.iter().any(|s| s.id == seg),
        "sealed before its max age"
    );
    let sealed = c.metrics().segments_sealed;
    mono.store(t2 + 10 * NS, Ordering::Relaxed);
    fake.drain(&mut c, t2 + 10 * NS);
    assert!(
        c.metrics().segments_sealed > sealed,
        "sealed at its max age"
    );
    assert!(matches!(c.check_kept(seg), Err(AofError::Released { .. })));
}

/// Appends 12 KiB records until a record lands in segment `seg`.
fn fill_to(c: &mut LogCore, fake: &mut Fake, seg: u32) {
    while append(c, fake, &[3u8; 12 * 1024]).segment_index() < seg {}
    c.request_flush_all();
    fake.drain(c, 0);
}

#[test]
fn a_spare_is_recycled_as_the_next_segment_without_zero_writing() {
    let (mut c, mut fake, segs) = log_with_sealed(2, 2);
    c.request_release(segs[2][0]).unwrap();
    fake.drain(&mut c, 0);
    // The next file prepared comes from a spare (oldest first).
    let start = fake.ops.len();
    let next = c.next_segment;
    fill_to(&mut c, &mut fake, next as u32 + 2);
    let ops = ops_from(&fake, start);
    let size = 64 * 1024 - 4096;
    let spare0 = "Rename(/fake/segments/00000000000000000000.spare -> /fake/segments/";
    let n: u64 = ops
        .iter()
        .find_map(|o| o.strip_prefix(spare0))
        .expect("spare 0 recycled")[..20]
        .parse()
        .unwrap();
    let expect = [
        format!("Open({n})"),
        format!("Write({n} @0 +4096)"),
        format!("Write({n} @{size} +4096)"),
        format!("Sync({n})"),
        format!("Rename(/fake/segments/00000000000000000000.spare -> /fake/segments/{n:020}.seg)"),
        "SyncDir(/fake/segments)".into(),
    ];
    let mine: Vec<_> = ops
        .iter()
        .filter(|o| {
            o.starts_with(&format!("Open({n})"))
                || o.starts_with(&format!("Write({n} "))
                || o.starts_with(&format!("Sync({n})"))
                || o.contains(".spare")
                || o.starts_with("SyncDir")
        })
        .take(6)
        .cloned()
        .collect();
    assert_eq!(mine, expect, "{ops:?}");
    assert!(!ops.iter().any(|o| o.starts_with(&format!("Create({n})"))));
    // Each spare is used once (the second may already be prepared ahead).
    let recycled = c.metrics().segments_recycled;
    assert!(recycled >= 1);
    assert_eq!(recycled as usize + c.rel.spares.len(), 2);
    // The segment that starts in it says its file is recycled; fresh ones do not.
    let header = |id: u64| match SegmentHeader::decode(&fake.files[&id][..64]).unwrap() {
        crate::format::HeaderState::Valid(h, _) => h,
        other => panic!("{other:?}"),
    };
    assert!(header(n).recycled);
    assert!(!header(n - 1).recycled);
}

#[test]
fn a_spare_that_fails_is_dropped_and_a_new_file_prepared_at_once() {
    let (mut c, mut fake, segs) = log_with_sealed(2, 2);
    c.request_release(segs[2][0]).unwrap();
    fake.drain(&mut c, 0);
    assert_eq!(c.rel.spares.len(), 2);
    fake.fail_opens = true;
    fill_to(&mut c, &mut fake, 4);
    fake.fail_opens = false;
    // Both spares failed and were removed; the file came from a create, no pause.
    assert!(c.rel.spares.is_empty());
    fake.index_of("Unlink(/fake/segments/00000000000000000000.spare)");
    fake.index_of("Unlink(/fake/segments/00000000000000000001.spare)");
    fake.index_of("Create(4)");
    assert!(c.prepare_error().is_none());
    assert!(c.check_open().is_ok());
    assert_eq!(c.metrics().segments_recycled, 0);
}
