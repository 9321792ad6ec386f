//! `release_before` end to end: what goes, what stays, what readers, streams and
//! followers see, and that a reopen never brings a released record back.

mod common;

use bop_rs::aof2::config::SegmentId;
use bop_rs::aof2::reader::SealedSegmentStream;
use bop_rs::aof2::{Aof, AofError, RecordId};
use common::*;
use std::path::Path;
use std::time::Duration;

/// Appends `n` records of ~4 KiB and makes them durable; returns their ids.
fn fill(aof: &Aof, tag: u64, n: u64) -> Vec<RecordId> {
    let rids: Vec<_> = (0..n)
        .map(|i| aof.append_record(&record(tag, i)).unwrap())
        .collect();
    aof.flush().unwrap();
    rids
}

fn record(tag: u64, i: u64) -> Vec<u8> {
    let mut p = payload(tag, i);
    p.resize(4000, (i % 251) as u8);
    p
}

fn seg_files(root: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .collect();
    v.sort();
    v
}

#[test]
fn released_segments_are_gone_for_readers_and_for_good_after_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(d.path()));
    let rids = fill(&aof, 1, 60); // ~15 records per 64 KiB segment: 4+ segments
    let keep = rids[35];
    let kept_seg = keep.segment_index() as u64;
    assert!(kept_seg >= 2, "{keep}");
    let (released, aof) = within(Duration::from_secs(10), "release_before", move || {
        (aof.release_before(keep).unwrap(), aof)
    });
    // Every segment wholly before `keep` goes; the one holding it stays.
    assert_eq!(released as u64, kept_seg);
    assert_eq!(aof.release_before(keep).unwrap(), 0, "idempotent");
    assert_eq!(aof.first_record().segment_index() as u64, kept_seg);
    assert_eq!(aof.flush_metrics().segments_released, kept_seg);
    let e = aof.open_reader(SegmentId::new(0)).err().unwrap();
    assert!(
        matches!(e, AofError::Released { segment: 0, first_kept, .. } if first_kept == kept_seg),
        "{e}"
    );
    assert!(e.to_string().contains(d.path().to_str().unwrap()), "{e}");
    for (i, rid) in rids.iter().enumerate() {
        if rid.segment_index() as u64 >= kept_seg {
            assert_eq!(read_back(&aof, *rid), record(1, i as u64));
        }
    }
    // A stream from the start begins where the log now starts; one from a released
    // record is refused.
    let mut s = SealedSegmentStream::new(&aof).unwrap();
    let first = s.next_segment_blocking().unwrap().unwrap().into_cursor();
    assert_eq!(first.position().segment_index() as u64, kept_seg);
    let e = SealedSegmentStream::with_start_from(&aof, Some(rids[0]))
        .err()
        .unwrap();
    assert!(matches!(e, AofError::Released { .. }), "{e}");
    let catalog = aof.catalog_snapshot();
    assert_eq!(catalog[0].segment_id, kept_seg);
    drop(first);
    drop(s);
    aof.close().unwrap();
    drop(aof);

    // Released files left the segment directory (kept as spares or unlinked); those a
    // close came too early for go at the reopen.
    let aof = open(&m, small_cfg(d.path()));
    let segs = seg_files(d.path(), ".seg");
    assert!(
        segs.iter()
            .all(|n| n[..20].parse::<u64>().unwrap() >= kept_seg),
        "{segs:?}"
    );
    assert_eq!(aof.first_record().segment_index() as u64, kept_seg);
    assert!(matches!(
        aof.open_reader(SegmentId::new(kept_seg - 1)),
        Err(AofError::Released { .. })
    ));
    for (i, rid) in rids.iter().enumerate() {
        if rid.segment_index() as u64 >= kept_seg {
            assert_eq!(read_back(&aof, *rid), record(1, i as u64));
        }
    }
    // The log goes on: new records after the reopen, ids never reused.
    let more = fill(&aof, 2, 5);
    assert!(more[0] > *rids.last().unwrap());
}

#[test]
fn a_reader_holding_a_released_segment_keeps_reading_it() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(d.path());
    cfg.spare_segments = 4;
    let aof = open(&m, cfg);
    let rids = fill(&aof, 3, 40);
    let reader = aof.open_reader(SegmentId::new(0)).unwrap();
    let cut = *rids.iter().find(|r| r.segment_index() == 2).unwrap();
    assert_eq!(aof.release_before(cut).unwrap(), 2);
    // Its file was unlinked (never reused: the reader maps it), the other kept as a
    // spare; the reader still reads what it read before.
    for _ in 0..200 {
        if seg_files(d.path(), ".seg").iter().all(|n| {
            !n.starts_with("00000000000000000000") && !n.starts_with("00000000000000000001")
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        seg_files(d.path(), ".spare"),
        vec!["00000000000000000001.spare".to_string()]
    );
    assert_eq!(reader.read_record(rids[0]).unwrap().payload(), record(3, 0));
}

#[test]
fn release_before_async_and_a_stream_that_falls_behind() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(d.path()));
    let rids = fill(&aof, 4, 50);
    let mut s = SealedSegmentStream::new(&aof).unwrap();
    let c = s.next_segment_blocking().unwrap().unwrap().into_cursor();
    assert_eq!(c.position().segment_index(), 0);
    drop(c);
    let cut = *rids.iter().find(|r| r.segment_index() == 2).unwrap();
    let n = futures_lite_block_on(aof.release_before_async(cut)).unwrap();
    assert_eq!(n, 2);
    // The stream was in segment 0: it fell behind the release and says so.
    let e = s.next_segment_blocking().err().unwrap();
    assert!(matches!(e, AofError::Released { segment: 0, .. }), "{e}");
    // Past the tail: an error, nothing released.
    let past = RecordId::from_parts(1000, 64);
    assert!(matches!(
        aof.release_before(past),
        Err(AofError::RecordNotFound { .. })
    ));
}

/// Polls a future to completion on this thread (no runtime needed: the engine's
/// futures are woken by the shard).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct T(std::thread::Thread);
    impl Wake for T {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(T(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Waits until the files of segments below `first_kept` left the directory.
fn wait_removed(root: &Path, first_kept: u64) {
    let start = std::time::Instant::now();
    while seg_files(root, ".seg")
        .iter()
        .any(|n| n[..20].parse::<u64>().unwrap() < first_kept)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "never removed");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn damaged_spare_files_are_removed_or_trimmed_and_never_read() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(d.path()));
    let rids = fill(&aof, 5, 40);
    let cut = *rids.iter().find(|r| r.segment_index() == 2).unwrap();
    assert_eq!(aof.release_before(cut).unwrap(), 2);
    wait_removed(d.path(), 2);
    drop(aof);
    let segs = d.path().join("segments");
    // Damage: a spare cut to a size no segment has, one full of garbage, and more
    // spares of one size than the pool keeps (2 by default).
    std::fs::write(segs.join("00000000000000000000.spare"), vec![0xee; 5000]).unwrap();
    std::fs::write(segs.join("00000000000000000001.spare"), vec![0xee; 65536]).unwrap();
    for id in [90u64, 91, 92] {
        std::fs::write(segs.join(format!("{id:020}.spare")), vec![0u8; 65536]).unwrap();
    }
    let aof = open(&m, small_cfg(d.path()));
    for (i, rid) in rids.iter().enumerate().skip(1) {
        if rid.segment_index() >= 2 {
            assert_eq!(read_back(&aof, *rid), record(5, i as u64));
        }
    }
    let start = std::time::Instant::now();
    loop {
        let spares = seg_files(d.path(), ".spare");
        if spares.len() == 2 {
            assert!(!spares.contains(&"00000000000000000000.spare".to_string()));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "spares never trimmed: {spares:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let more = fill(&aof, 6, 40);
    assert_eq!(read_back(&aof, more[39]), record(6, 39));
}

#[test]
fn a_damaged_release_mark_is_an_error_naming_it_and_nothing_is_touched() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(d.path()));
    let rids = fill(&aof, 7, 40);
    let cut = *rids.iter().find(|r| r.segment_index() == 2).unwrap();
    aof.release_before(cut).unwrap();
    drop(aof);
    let mark = d.path().join("RELEASED");
    let mut b = std::fs::read(&mark).unwrap();
    b[17] ^= 0x01;
    std::fs::write(&mark, &b).unwrap();
    let before = seg_files(d.path(), "");
    let e = bop_rs::aof2::Aof::new(m.handle(), small_cfg(d.path()))
        .err()
        .unwrap();
    assert!(matches!(e, AofError::Corruption { .. }), "{e}");
    assert!(e.to_string().contains("RELEASED"), "{e}");
    assert_eq!(seg_files(d.path(), ""), before, "nothing touched");
}

#[test]
fn readers_racing_releases_of_their_segments_see_their_bytes_or_released_never_garbage() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(d.path());
    cfg.spare_segments = 2;
    let aof = std::sync::Arc::new(open(&m, cfg));
    let rids = fill(&aof, 8, 200); // ~13 segments of 64 KiB
    let rids = std::sync::Arc::new(rids);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|t| {
            let (aof, rids, stop) = (aof.clone(), rids.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut released) = (0u64, 0u64);
                let mut i = t;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = i % rids.len();
                    i += 7;
                    let rid = rids[k];
                    match aof.open_reader(SegmentId::new(rid.segment_index() as u64)) {
                        Ok(r) => {
                            // A reader that opened keeps its bytes, released or not.
                            for _ in 0..3 {
                                let got = r.read_record(rid).unwrap();
                                assert_eq!(got.payload(), record(8, k as u64), "{rid}");
                            }
                            ok += 1;
                        }
                        Err(AofError::Released { .. }) => released += 1,
                        Err(e) => panic!("{rid}: {e}"),
                    }
                }
                (ok, released)
            })
        })
        .collect();
    // Release segment by segment while they read, then new records recycle the files.
    let last_seg = rids.last().unwrap().segment_index();
    for seg in 1..last_seg {
        let cut = *rids.iter().find(|r| r.segment_index() == seg).unwrap();
        aof.release_before(cut).unwrap();
        fill(&aof, 9, 5);
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut released) = (0, 0);
    for h in readers {
        let (a, b) = h.join().unwrap();
        ok += a;
        released += b;
    }
    assert!(ok > 0 && released > 0, "ok {ok}, released {released}");
    assert!(
        aof.flush_metrics().segments_recycled > 0 || aof.flush_metrics().segment_files_removed > 0
    );
}

#[test]
fn a_lost_segment_above_the_release_mark_is_an_error_not_a_released_head() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(d.path()));
    let rids = fill(&aof, 10, 60);
    let cut = *rids.iter().find(|r| r.segment_index() == 2).unwrap();
    assert_eq!(aof.release_before(cut).unwrap(), 2);
    wait_removed(d.path(), 2);
    drop(aof);
    // The first kept segment goes missing: not a release (the mark says the log starts
    // there), so the open refuses, naming what is missing, and touches nothing.
    let first = d.path().join("segments").join(format!("{:020}.seg", 2));
    std::fs::rename(&first, d.path().join("aside")).unwrap();
    let before = seg_files(d.path(), "");
    let e = bop_rs::aof2::Aof::new(m.handle(), small_cfg(d.path()))
        .err()
        .unwrap();
    assert!(matches!(e, AofError::Corruption { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("missing") && msg.contains("release mark"),
        "{msg}"
    );
    assert_eq!(seg_files(d.path(), ""), before, "nothing touched");
    // Put back, the log opens where it starts, with every kept record.
    std::fs::rename(d.path().join("aside"), &first).unwrap();
    let aof = open(&m, small_cfg(d.path()));
    assert_eq!(aof.first_record(), cut);
    for (i, rid) in rids.iter().enumerate() {
        if rid.segment_index() >= 2 {
            assert_eq!(read_back(&aof, *rid), record(10, i as u64));
        }
    }
}

/// A stream's starting point is fixed when it is created: one made by
/// `SealedSegmentStream::new` (or `with_start_from(None)`) before a release, and not
/// advanced yet, gets `Released` on its next call instead of starting silently at the
/// first kept segment; a follower created before segments were sealed and released
/// reports them (opening one is `Released`) rather than skip them.
#[test]
fn a_stream_or_follower_created_before_a_release_never_skips_released_records() {
    let d = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(d.path()));
    let mut follower = aof.tail_follower();
    let rids = fill(&aof, 6, 50);
    let mut s = SealedSegmentStream::new(&aof).unwrap();
    let mut s2 = SealedSegmentStream::with_start_from(&aof, None).unwrap();
    let cut = *rids.iter().find(|r| r.segment_index() == 2).unwrap();
    assert_eq!(aof.release_before(cut).unwrap(), 2);
    for s in [&mut s, &mut s2] {
        let e = s.next_segment_blocking().expect_err("Released, not a skip");
        assert!(
            matches!(
                e,
                AofError::Released {
                    segment: 0,
                    first_kept: 2,
                    ..
                }
            ),
            "{e}"
        );
    }
    // A stream made now starts where the log starts now.
    let mut now = SealedSegmentStream::new(&aof).unwrap();
    let c = now.next_segment_blocking().unwrap().unwrap().into_cursor();
    assert_eq!(c.position().segment_index(), 2);
    // The follower saw nothing sealed when it was made: it reports segment 0 first,
    // which is released.
    let first = follower.next_sealed_segment_blocking().unwrap();
    assert_eq!(first, SegmentId::new(0));
    assert!(matches!(
        aof.open_reader(first),
        Err(AofError::Released { .. })
    ));
    assert_eq!(
        follower.next_sealed_segment_blocking().unwrap(),
        SegmentId::new(1)
    );
    assert_eq!(
        follower.next_sealed_segment_blocking().unwrap(),
        SegmentId::new(2)
    );
}
