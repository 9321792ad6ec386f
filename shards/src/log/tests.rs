//! The log core driven by a fake executor: no disk, exact control of completions.

use super::ops::{Chain, IoData, OpKind};
use super::prepare::PREP_RETRY_NS;
use super::*;
use crate::error::WouldBlockKind;
use crate::format::{HeaderState, ScanStop, SegmentFooter, SegmentHeader, BLOCK};
use std::collections::HashMap;
use std::io;
use std::path::Path;

const KIB: u64 = 1024;

pub(super) fn cfg(f: impl FnOnce(&mut AofConfig)) -> AofConfig {
    let mut c = AofConfig::default();
    c.root_dir = "/fake".into();
    c.segment_min_bytes = 64 * KIB;
    c.segment_target_bytes = 64 * KIB;
    c.segment_max_bytes = 1024 * KIB;
    c.flush.flush_interval_ms = 0;
    c.flush.flush_watermark_bytes = 1 << 30;
    c.flush.max_unflushed_bytes = 1 << 30;
    f(&mut c);
    c.normalized()
}

pub(super) fn core(c: AofConfig) -> LogCore {
    let paths = LogPaths::new(Path::new("/fake"));
    LogCore::new(
        c,
        paths,
        Clock::Manual(Arc::new(std::sync::atomic::AtomicU64::new(1_000))),
        7,
        Recovered::default(),
    )
}

/// Executes operations against in-memory files and records what ran.
#[derive(Default)]
pub(super) struct Fake {
    pub(super) files: HashMap<u64, Vec<u8>>,
    pub(super) ops: Vec<String>,
    pub(super) fail_syncs: bool,
    /// Fail file creation with ENOSPC (a full disk when preparing a segment).
    pub(super) fail_creates: bool,
    /// Fail opening files with EIO (a damaged spare).
    pub(super) fail_opens: bool,
}

impl Fake {
    fn exec(&mut self, kind: &OpKind) -> io::Result<()> {
        self.ops.push(format!("{kind:?}"));
        match kind {
            OpKind::Create { .. } if self.fail_creates => {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            OpKind::Create { seg, .. } => {
                self.files.insert(*seg, Vec::new());
            }
            OpKind::Open { .. } if self.fail_opens => {
                return Err(io::Error::from_raw_os_error(libc::EIO))
            }
            OpKind::Open { seg, .. } => {
                self.files.entry(*seg).or_default();
            }
            OpKind::Write { seg, offset, data } => {
                assert!(
                    data.iter().all(|d| !d.is_empty()),
                    "no empty pieces in a write: {kind:?}"
                );
                let f = self.files.get_mut(seg).expect("file exists");
                let mut at = *offset as usize;
                for d in data {
                    let b = d.bytes();
                    if f.len() < at + b.len() {
                        f.resize(at + b.len(), 0);
                    }
                    f[at..at + b.len()].copy_from_slice(b);
                    at += b.len();
                }
            }
            OpKind::Sync { .. } if self.fail_syncs => {
                return Err(io::Error::from_raw_os_error(libc::EIO))
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn run_chain(&mut self, core: &mut LogCore, chain: Chain) {
        let mut failed = false;
        let mut results = Vec::new();
        for op in chain.ops {
            let r = if failed {
                Err(io::Error::from_raw_os_error(libc::ECANCELED))
            } else {
                self.exec(&op.kind)
            };
            failed |= r.is_err();
            results.push((op.id, r));
        }
        for (id, r) in results {
            core.complete(id, r);
        }
    }

    /// Runs everything the core asks for until it is idle.
    pub(super) fn drain(&mut self, core: &mut LogCore, now: u64) {
        loop {
            let chains = core.poll(now);
            if chains.is_empty() {
                return;
            }
            for c in chains {
                self.run_chain(core, c);
            }
        }
    }

    pub(super) fn index_of(&self, op: &str) -> usize {
        self.ops
            .iter()
            .position(|o| o == op)
            .unwrap_or_else(|| panic!("{op} never ran: {:?}", self.ops))
    }
}

/// Appends, running the executor while a roll waits for its prepared file.
pub(super) fn append(c: &mut LogCore, fake: &mut Fake, payload: &[u8]) -> RecordId {
    loop {
        match c.append(payload) {
            Ok(a) => return a.rid,
            Err(AofError::WouldBlock(WouldBlockKind::Rollover)) => fake.drain(c, 0),
            Err(e) => panic!("append failed: {e}"),
        }
    }
}

/// Appends a first record (its segment prepared on demand) and makes it durable.
fn rids_first(c: &mut LogCore, fake: &mut Fake) -> RecordId {
    let rid = append(c, fake, b"first");
    c.request_flush_all();
    fake.drain(c, 0);
    rid
}

pub(super) fn is_durable(core: &LogCore, rid: RecordId) -> bool {
    rid.as_u64() < core.durable_pos()
}

#[test]
fn a_record_is_durable_only_after_the_sync_covering_it() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    fake.drain(&mut c, 0); // prepares segment 0
    let rid = append(&mut c, &mut fake, b"hello");
    fake.drain(&mut c, 0);
    assert!(!is_durable(&c, rid), "nothing asked for a sync");
    assert!(c.request_flush(rid.as_u64() + 1));
    // First the segment header alone, then the data chain: write, then sync.
    let header = c.poll(0).pop().unwrap();
    fake.run_chain(&mut c, header);
    let chain = c.poll(0).pop().unwrap();
    let ids: Vec<u64> = chain.ops.iter().map(|o| o.id).collect();
    assert!(matches!(chain.ops[0].kind, OpKind::Write { .. }));
    assert!(matches!(chain.ops[1].kind, OpKind::Sync { .. }));
    c.complete(ids[0], Ok(()));
    assert!(!is_durable(&c, rid), "written is not durable");
    assert!(c.poll(0).is_empty(), "one data chain in flight at a time");
    c.complete(ids[1], Ok(()));
    assert!(is_durable(&c, rid));
}

#[test]
fn a_failed_sync_poisons_the_log() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    fake.drain(&mut c, 0);
    let rid = append(&mut c, &mut fake, b"x");
    fake.fail_syncs = true;
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert!(!is_durable(&c, rid));
    let e = c.append(b"y").unwrap_err();
    assert!(matches!(e, AofError::Poisoned { .. }), "{e}");
    assert!(e.to_string().contains("/fake"), "{e}");
    assert!(c.poll(0).is_empty(), "a poisoned log issues no more I/O");
    fake.fail_syncs = false;
    assert!(!c.request_flush_all() || c.poll(0).is_empty());
    assert!(
        !is_durable(&c, rid),
        "nothing is reported durable after a failure"
    );
}

#[test]
fn rolling_seals_the_old_segment_before_writing_the_new_one() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    let mut rids = Vec::new();
    for i in 0..100u8 {
        rids.push(append(&mut c, &mut fake, &[i; 1000]));
    }
    assert!(
        rids.last().unwrap().segment_index() >= 1,
        "64 KiB segments rolled"
    );
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert!(rids.iter().all(|r| is_durable(&c, *r)));
    let footer0 = format!("Write(0 @{} +4096)", 64 * KIB - 4096);
    let seal0 = fake.index_of(&footer0);
    let header1 = fake.index_of("Write(1 @0 +4096)");
    let data0_sync = fake.ops[..seal0]
        .iter()
        .rposition(|o| o == "Sync(0)")
        .expect("data of 0 synced first");
    assert!(data0_sync < seal0 && seal0 < header1, "{:?}", fake.ops);
    assert_eq!(
        fake.ops[seal0 + 1],
        "Sync(0)",
        "footer synced before moving on"
    );
    // The sealed image verifies: footer checksum and every frame.
    let img = &fake.files[&0];
    let HeaderState::Valid(h, seed) = SegmentHeader::decode(img).unwrap() else {
        panic!("blank header")
    };
    let f = SegmentFooter::decode(&img[(h.file_size - 4096) as usize..], seed, h.file_size)
        .unwrap()
        .unwrap();
    let scan = crate::format::scan_frames(seed, img, f.data_end);
    assert_eq!(scan.stop, ScanStop::Limit);
    assert_eq!(scan.record_count, f.record_count);
    assert_eq!(scan.last_crc, f.last_frame_crc);
    let in_seg0 = rids.iter().filter(|r| r.segment_index() == 0).count() as u64;
    assert_eq!(f.record_count, in_seg0);
}

#[test]
fn the_partial_last_block_is_rewritten_with_an_identical_prefix() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    let mut images = Vec::new();
    let mut ends = Vec::new();
    for i in 0..6u8 {
        append(&mut c, &mut fake, &[i + 1; 300]);
        c.request_flush_all();
        fake.drain(&mut c, 0);
        images.push(fake.files[&0].clone());
        ends.push((c.durable_pos() & 0xffff_ffff) as usize);
    }
    for w in 1..images.len() {
        let end = ends[w - 1];
        assert_eq!(
            images[w][..end],
            images[w - 1][..end],
            "round {w} changed acknowledged bytes"
        );
        assert!(
            images[w - 1][end..4096].iter().all(|&b| b == 0),
            "padding of the bounce block is zero"
        );
    }
    // Every round rewrote block 0, never past what it needed.
    assert!(
        fake.ops
            .iter()
            .filter(|o| o.starts_with("Write(0 @0 +4096)"))
            .count()
            >= 6
    );
}

#[test]
fn back_pressure_admits_one_record_when_nothing_is_unflushed() {
    let mut c = core(cfg(|c| {
        c.flush.max_unflushed_bytes = 64 * KIB;
        c.flush.flush_watermark_bytes = 64 * KIB;
    }));
    let mut fake = Fake::default();
    // Segment 0 a quarter full: segment 1 is prepared ahead at the 64 KiB target.
    append(&mut c, &mut fake, &[1u8; 20 * KIB as usize]);
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert!(c.prepared.front().is_some_and(|p| p.0 == 1));
    let big = vec![7u8; 100 * KIB as usize];
    // The prepared 64 KiB file is too small: the append waits while it is replaced.
    assert!(matches!(
        c.append(&big),
        Err(AofError::WouldBlock(WouldBlockKind::Rollover))
    ));
    let rid = append(&mut c, &mut fake, &big);
    let e = c.append(b"next").unwrap_err();
    assert!(matches!(e, AofError::WouldBlock(WouldBlockKind::Admission)));
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert!(is_durable(&c, rid));
    c.append(b"next").expect("admitted after the sync");
    // The large record got a segment of its own: a larger file was prepared under the
    // same id and renamed over the 64 KiB one (the id never left the disk).
    assert_eq!(
        fake.ops
            .iter()
            .filter(|o| o.starts_with("Create(1)"))
            .count(),
        2,
        "{:?}",
        fake.ops
    );
    assert!(fake.files[&1].len() as u64 > 100 * KIB);
}

#[test]
fn an_oversize_record_is_refused_and_the_log_keeps_working() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    let max = c.config().max_record_bytes();
    let e = c.append(&vec![0u8; max + 1]).unwrap_err();
    assert!(
        matches!(e, AofError::RecordTooLarge { len, .. } if len == max + 1),
        "{e}"
    );
    let rid = append(&mut c, &mut fake, &vec![1u8; max]);
    let small = append(&mut c, &mut fake, b"after");
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert!(is_durable(&c, rid) && is_durable(&c, small));
}

#[test]
fn the_watermark_starts_a_sync_without_a_request() {
    let mut c = core(cfg(|c| c.flush.flush_watermark_bytes = 4 * KIB));
    let mut fake = Fake::default();
    let mut last = None;
    for _ in 0..5 {
        last = Some(append(&mut c, &mut fake, &[3u8; 1000]));
    }
    fake.drain(&mut c, 0);
    assert_eq!(c.metrics().flushes_watermark, 1);
    assert!(
        c.durable_pos() > pos(0, 4 * KIB),
        "the watermark flush covered 4 KiB"
    );
    let _ = last;
}

#[test]
fn the_interval_timer_flushes_once_and_disarms() {
    let mut c = core(cfg(|c| c.flush.flush_interval_ms = 5));
    let mut fake = Fake::default();
    fake.drain(&mut c, 0);
    assert_eq!(c.deadline(), None, "no timer while nothing is unflushed");
    let rid = append(&mut c, &mut fake, b"tick");
    fake.drain(&mut c, 1_000_000);
    assert_eq!(c.deadline(), Some(6_000_000));
    assert!(!is_durable(&c, rid));
    fake.drain(&mut c, 6_000_000);
    assert!(
        is_durable(&c, rid),
        "the interval flush synced with no further calls"
    );
    assert_eq!(c.deadline, None, "disarmed once nothing is unflushed");
    assert_eq!(c.metrics().flushes_interval, 1);
}

#[test]
fn seal_active_seals_and_the_next_append_opens_a_new_segment() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    assert_eq!(
        c.seal_active().unwrap().0,
        None,
        "nothing to seal in an empty log"
    );
    append(&mut c, &mut fake, b"one");
    let (id, _) = c.seal_active().unwrap();
    assert_eq!(id, Some(0));
    fake.drain(&mut c, 0);
    assert!(c.durable_pos() >= pos(1, 0), "segment 0 sealed");
    assert_eq!(c.sealed_segments().len(), 1);
    assert_eq!(c.seal_active().unwrap().0, None);
    let rid = append(&mut c, &mut fake, b"two");
    assert_eq!(rid.segment_index(), 1);
}

#[test]
fn ids_past_the_tail_are_refused() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    let rid = append(&mut c, &mut fake, b"a");
    c.check_rid(rid).unwrap();
    assert!(
        c.check_rid(RecordId::from_parts(0, 10)).is_err(),
        "inside the header"
    );
    assert!(
        c.check_rid(RecordId::from_parts(0, 4000)).is_err(),
        "past the tail"
    );
    assert!(
        c.check_rid(RecordId::from_parts(5, 64)).is_err(),
        "a later segment"
    );
}

#[test]
fn closing_drains_everything_appended() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    let rid = append(&mut c, &mut fake, b"last words");
    c.begin_close();
    assert!(!c.is_drained());
    fake.drain(&mut c, 0);
    assert!(c.is_drained());
    assert!(is_durable(&c, rid));
    assert!(matches!(c.append(b"x"), Err(AofError::Closed { .. })));
}

/// Rule 2 of the partly filled last block: a write in flight reads a padded copy made
/// when it was issued, never the buffer appenders keep filling. Appends made while the
/// write is in flight (as on the io_uring backend) leave its bytes unchanged: the
/// record they were issued for, then zero padding to the block end.
#[test]
fn a_write_in_flight_reads_a_frozen_padded_copy_of_the_last_block() {
    let mut c = core(cfg(|_| {}));
    let mut fake = Fake::default();
    fake.drain(&mut c, 0);
    let first = append(&mut c, &mut fake, &[0xaa; 100]);
    c.request_flush(first.as_u64() + 1);
    let header = c.poll(0).pop().unwrap();
    fake.run_chain(&mut c, header);
    let chain = c.poll(0).pop().unwrap();
    let OpKind::Write { offset, data, .. } = &chain.ops[0].kind else {
        panic!("a write first: {:?}", chain.ops)
    };
    assert_eq!(*offset, 0, "the first block, header included");
    let snapshot =
        |data: &[IoData]| -> Vec<u8> { data.iter().flat_map(|d| d.bytes().to_vec()).collect() };
    let before = snapshot(data);
    assert_eq!(before.len(), BLOCK, "one padded block");
    let end = first.segment_offset() as usize + format::frame_size(100);
    assert!(
        before[end..].iter().all(|&b| b == 0),
        "zero padding past the record"
    );
    // Appenders fill the rest of the block while the write is in flight.
    for i in 0..20u8 {
        c.append(&[i | 1; 100]).unwrap();
    }
    assert_eq!(snapshot(data), before, "the bytes in flight did not change");
    // The next write rewrites the block with the same prefix and the new records.
    let ids: Vec<u64> = chain.ops.iter().map(|o| o.id).collect();
    for id in ids {
        c.complete(id, Ok(()));
    }
    c.request_flush_all();
    let next = c.poll(0).pop().unwrap();
    let OpKind::Write { offset, data, .. } = &next.ops[0].kind else {
        panic!("a write first: {:?}", next.ops)
    };
    assert_eq!(*offset, 0, "the partly filled block is rewritten");
    assert_eq!(
        snapshot(data)[..end],
        before[..end],
        "an identical acknowledged prefix"
    );
}

/// A failed segment preparation (a full disk) loses nothing and poisons nothing: the
/// records already appended still become durable, appends needing the new segment fail
/// with the error naming the file, and once space is back a retry lets them through.
#[test]
fn a_failed_preparation_fails_the_roll_not_the_log_and_is_retried() {
    let time = Arc::new(std::sync::atomic::AtomicU64::new(1_000));
    let mut c = LogCore::new(
        cfg(|_| {}),
        LogPaths::new(Path::new("/fake")),
        Clock::Manual(time.clone()),
        7,
        Recovered::default(),
    );
    let mut fake = Fake::default();
    rids_first(&mut c, &mut fake); // segment 0 prepared and in use
    fake.fail_creates = true;
    // Fill segment 0; the next segment's preparation fails with ENOSPC.
    let mut rids = Vec::new();
    let err = loop {
        match c.append(&[7u8; 1000]) {
            Ok(a) => rids.push(a.rid),
            Err(AofError::WouldBlock(WouldBlockKind::Rollover)) => fake.drain(&mut c, 0),
            Err(e) => break e,
        }
    };
    assert!(!rids.is_empty());
    let msg = err.to_string();
    assert!(
        msg.contains("/fake") && msg.contains("No space left"),
        "{msg}"
    );
    assert!(c.poison().is_none(), "a failed preparation does not poison");
    assert_eq!(c.metrics().prepare_failures, 1);
    // What was appended still syncs.
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert!(rids.iter().all(|r| is_durable(&c, *r)));
    // Before the retry interval: the same error at once, no new attempt.
    assert!(c.append(&[7u8; 1000]).is_err());
    assert_eq!(c.metrics().prepare_failures, 1);
    // Space is back and the interval passed: the append retries and goes through.
    fake.fail_creates = false;
    time.fetch_add(PREP_RETRY_NS, std::sync::atomic::Ordering::Relaxed);
    let rid = append(&mut c, &mut fake, &[8u8; 1000]);
    assert_eq!(rid.segment_index(), 1);
    c.request_flush_all();
    fake.drain(&mut c, 0);
    assert!(is_durable(&c, rid));
    assert!(
        fake.ops.iter().any(|o| o.starts_with("Unlink(")),
        "leftovers removed: {:?}",
        fake.ops
    );
}
