//! Readers: cursors over sealed and active segments, the tail follower, and the
//! sealed-then-active stream under a concurrent writer.

mod common;

use bop_rs::aof2::config::SegmentId;
use bop_rs::aof2::error::AofError;
use bop_rs::aof2::reader::{SealedSegmentStream, SegmentCursor, StreamSegment, TailEvent};
use bop_rs::aof2::{Aof, RecordId};
use common::*;
use std::sync::Arc;
use std::time::Duration;

/// Drains a cursor into (id, payload) pairs.
fn drain(c: &mut SegmentCursor) -> Vec<(RecordId, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(r) = c.next().expect("cursor reads") {
        out.push((r.record_id(), r.payload().to_vec()));
    }
    out
}

/// Every record of the log through cursors over each segment in the catalog.
fn all_records(aof: &Aof) -> Vec<(RecordId, Vec<u8>)> {
    let mut out = Vec::new();
    for seg in aof.catalog_snapshot() {
        let reader = aof.open_reader(SegmentId::new(seg.segment_id)).unwrap();
        out.extend(drain(&mut SegmentCursor::new(reader)));
    }
    out
}

#[test]
fn cursor_reads_sealed_and_active_segments_in_order_and_seeks() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(tmp.path()));
    let mut want = Vec::new();
    for i in 0..300 {
        let p = payload(1, i);
        want.push((aof.append_record(&p).unwrap(), p));
    }
    aof.flush().unwrap();
    let got = all_records(&aof);
    assert_eq!(
        got, want,
        "every record, in order, sealed and active segments"
    );
    let cat = aof.catalog_snapshot();
    assert!(
        cat.len() >= 3,
        "300 records of up to 3 KB roll 64 KiB segments"
    );
    assert!(cat[..cat.len() - 1].iter().all(|s| s.sealed));
    assert!(
        !cat.last().unwrap().sealed,
        "the active segment is read too"
    );

    // Timestamps never go backwards.
    let reader = aof.open_reader(SegmentId::new(cat[1].segment_id)).unwrap();
    let mut c = SegmentCursor::new(reader);
    let mut last = 0;
    while let Some(r) = c.next().unwrap() {
        assert!(r.timestamp() >= last);
        last = r.timestamp();
    }
    assert!(c.is_finished());

    // seek / seek_after, in a sealed and in the active segment.
    for seg in [&cat[1], cat.last().unwrap()] {
        let in_seg: Vec<_> = want
            .iter()
            .filter(|(r, _)| r.segment_index() as u64 == seg.segment_id)
            .collect();
        let mid = in_seg[in_seg.len() / 2];
        let reader = aof.open_reader(SegmentId::new(seg.segment_id)).unwrap();
        let mut c = SegmentCursor::new(reader);
        c.seek(mid.0).unwrap();
        assert_eq!(c.position(), mid.0);
        let rest = drain(&mut c);
        assert_eq!(rest[0], *mid);
        assert_eq!(rest.len(), in_seg.len() - in_seg.len() / 2);
        c.seek_after(mid.0).unwrap();
        assert_eq!(drain(&mut c).len(), rest.len() - 1);
        // An id inside a payload is not a record.
        let bogus = RecordId::from_parts(mid.0.segment_index(), mid.0.segment_offset() + 40);
        assert!(matches!(
            c.seek(bogus),
            Err(AofError::RecordNotFound { .. })
        ));
        // Another segment's id is not this segment's record.
        let other = RecordId::from_parts(mid.0.segment_index() + 100, 64);
        assert!(matches!(
            c.seek(other),
            Err(AofError::RecordNotFound { .. })
        ));
    }

    // After a reopen (which seals the last segment) everything reads back the same.
    drop(aof);
    let aof = open(&m, small_cfg(tmp.path()));
    assert_eq!(all_records(&aof), want);
    assert!(aof.catalog_snapshot().iter().all(|s| s.sealed));
}

#[test]
fn an_active_cursor_sees_only_durable_records() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(tmp.path());
    cfg.flush.flush_interval_ms = 60_000; // no timer flush during the test
    cfg.flush.flush_watermark_bytes = 32 << 20;
    let aof = open(&m, cfg);
    let a = aof.append_record(b"durable").unwrap();
    aof.flush_until(a).unwrap();
    aof.append_record(b"not yet durable").unwrap();
    let reader = aof
        .open_reader(SegmentId::new(a.segment_index() as u64))
        .unwrap();
    assert!(!reader.is_sealed());
    let got = drain(&mut SegmentCursor::new(reader));
    assert_eq!(got, vec![(a, b"durable".to_vec())]);
}

/// Appends `n` records from `writers` threads (rolling and sealing now and then),
/// closes the log, and returns every acknowledged (id, payload) in id order.
fn write_concurrently(aof: Arc<Aof>, writers: u64, n: u64) -> Vec<(RecordId, Vec<u8>)> {
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let aof = aof.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..n {
                    let p = payload(w, i);
                    let rid = aof.append_record(&p).unwrap();
                    mine.push((rid, p));
                    match (i + w * 7) % 97 {
                        0 => aof.flush_until(rid).unwrap(),
                        1 if w == 0 => {
                            aof.seal_active().unwrap();
                        }
                        _ => {}
                    }
                    if i % 50 == 0 {
                        std::thread::yield_now();
                    }
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    aof.close().unwrap();
    all.sort_by_key(|(r, _)| *r);
    all
}

#[test]
fn stream_delivers_every_record_once_in_order_under_a_concurrent_writer_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = Arc::new(open(&m, small_cfg(tmp.path())));
    // Two consumers: one reads each cursor to the end, one breaks out after a few
    // records every time and resumes with a new next_segment.
    let consumers: Vec<_> = [usize::MAX, 3]
        .into_iter()
        .map(|take| {
            let mut stream = SealedSegmentStream::new(&aof).unwrap();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let (mut sealed, mut active) = (0, 0);
                while let Some(seg) = stream.next_segment_blocking().unwrap() {
                    let mut c = match seg {
                        StreamSegment::Sealed(c) => {
                            sealed += 1;
                            c
                        }
                        StreamSegment::Active(c) => {
                            active += 1;
                            c
                        }
                    };
                    let mut n = 0;
                    while n < take {
                        let Some(r) = c.next().unwrap() else { break };
                        got.push((r.record_id(), r.payload().to_vec()));
                        n += 1;
                    }
                }
                (got, sealed, active)
            })
        })
        .collect();
    let want = write_concurrently(aof.clone(), 4, 1500);
    for c in consumers {
        let (got, sealed, active) = within(Duration::from_secs(60), "consumer", move || {
            c.join().unwrap()
        });
        // How many cursors of each kind depends on timing (a consumer that keeps up
        // reads everything through active cursors and never needs a sealed one).
        eprintln!("{sealed} sealed and {active} active cursors");
        assert!(sealed + active > 1);
        assert_eq!(got.len(), want.len(), "every record exactly once");
        assert!(got == want, "in order, byte for byte");
    }
}

#[test]
fn stream_delivers_every_record_once_in_order_on_tokio_with_cancelled_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = Arc::new(open(&m, small_cfg(tmp.path())));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let consumer = {
        let aof = aof.clone();
        rt.spawn(async move {
            let mut stream = SealedSegmentStream::new(&aof).unwrap();
            let mut got = Vec::new();
            let mut cancelled = 0u64;
            loop {
                // A short timeout cancels many waits: nothing may be lost by it.
                let seg =
                    match tokio::time::timeout(Duration::from_micros(200), stream.next_segment())
                        .await
                    {
                        Err(_) => {
                            cancelled += 1;
                            continue;
                        }
                        Ok(r) => r.unwrap(),
                    };
                let Some(seg) = seg else { break };
                let mut c = seg.into_cursor();
                while let Some(r) = c.next().unwrap() {
                    got.push((r.record_id(), r.payload().to_vec()));
                }
            }
            (got, cancelled)
        })
    };
    let want = write_concurrently(aof.clone(), 3, 1500);
    let (got, cancelled) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), consumer)
            .await
            .expect("the stream ends after close")
            .unwrap()
    });
    eprintln!("{cancelled} cancelled waits");
    assert_eq!(got.len(), want.len());
    assert!(got == want);
}

#[test]
fn a_stream_can_start_at_or_after_any_record() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(tmp.path()));
    let mut want = Vec::new();
    for i in 0..200 {
        let p = payload(2, i);
        want.push((aof.append_record(&p).unwrap(), p));
    }
    aof.flush().unwrap();
    aof.close().unwrap();
    let collect = |mut s: SealedSegmentStream| {
        let mut got = Vec::new();
        while let Some(seg) = s.next_segment_blocking().unwrap() {
            got.extend(drain(&mut seg.into_cursor()));
        }
        got
    };
    for k in [0usize, 1, 57, 120, 199] {
        let from = SealedSegmentStream::with_start_from(&aof, Some(want[k].0)).unwrap();
        assert_eq!(collect(from), want[k..]);
        let after = SealedSegmentStream::with_start_after(&aof, want[k].0).unwrap();
        assert_eq!(collect(after), want[k + 1..]);
    }
    let all = SealedSegmentStream::with_start_from(&aof, None).unwrap();
    assert_eq!(collect(all), want);
    let bogus = RecordId::from_parts(want[5].0.segment_index(), want[5].0.segment_offset() + 8);
    assert!(SealedSegmentStream::with_start_from(&aof, Some(bogus)).is_err());
    assert!(SealedSegmentStream::with_start_after(&aof, RecordId::from_parts(999, 64)).is_err());
}

#[test]
fn tail_followers_report_durable_advances_seals_and_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = Arc::new(open(&m, small_cfg(tmp.path())));
    let first = aof.append_record(b"before the followers").unwrap();
    aof.flush_until(first).unwrap();
    // Blocking followers on threads, and an async one.
    let blocking: Vec<_> = (0..3)
        .map(|_| {
            let mut f = aof.tail_follower();
            std::thread::spawn(move || {
                let mut events = Vec::new();
                let mut last_durable = 0;
                while let Some(st) = f.next_blocking() {
                    assert!(st.durable.as_u64() >= last_durable, "never goes back");
                    last_durable = st.durable.as_u64();
                    events.push(st.event);
                    if st.ended {
                        break;
                    }
                }
                events
            })
        })
        .collect();
    let mut sealed_follower = aof.tail_follower();
    let sealed_thread = std::thread::spawn(move || {
        let mut ids = Vec::new();
        while let Some(id) = sealed_follower.next_sealed_segment_blocking() {
            ids.push(id);
        }
        ids
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut async_follower = aof.tail_follower();
    let async_task = std::thread::spawn(move || {
        rt.block_on(async {
            let mut n = 0;
            while let Some(st) = async_follower.next().await {
                n += 1;
                if st.ended {
                    break;
                }
            }
            n
        })
    });
    let mut sealed = Vec::new();
    for round in 0..5 {
        for i in 0..20 {
            let rid = aof.append_record(&payload(round, i)).unwrap();
            aof.flush_until(rid).unwrap();
        }
        sealed.push(aof.seal_active().unwrap().unwrap());
    }
    let rid = aof.append_record(b"last").unwrap();
    aof.flush_until(rid).unwrap();
    aof.close().unwrap();
    // A clean close seals the active segment too.
    sealed.push(SegmentId::new(rid.segment_index() as u64));
    for h in blocking {
        let events = within(Duration::from_secs(30), "follower", move || {
            h.join().unwrap()
        });
        let seals: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                TailEvent::Sealed(id) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(seals, sealed, "every seal reported once, in order");
        let activations = events
            .iter()
            .filter(|e| matches!(e, TailEvent::Activated(_)))
            .count();
        // Seals are reported once each; activations may coalesce for a follower that
        // looks after two rolls (it reports the newest active segment).
        assert!(
            activations >= 3,
            "the segments after the seals were activated: {activations}"
        );
        assert!(events.len() > 10, "durable advances were reported");
    }
    let ids = within(Duration::from_secs(30), "sealed follower", move || {
        sealed_thread.join().unwrap()
    });
    assert_eq!(ids, sealed);
    let n = within(Duration::from_secs(30), "async follower", move || {
        async_task.join().unwrap()
    });
    assert!(n > 10);
    let st = aof.tail_state();
    assert!(st.ended);
    assert_eq!(st.last_sealed, sealed.last().copied());
}

/// The writer's workload for the slow-follower test: 300 appends, a durable wait
/// every 10. Returns how long it took.
fn timed_writer(aof: &Aof, round: u64) -> Duration {
    let t = std::time::Instant::now();
    for i in 0..300 {
        let rid = aof.append_record(&payload(round, i)).unwrap();
        if i % 10 == 9 {
            aof.flush_until(rid).unwrap();
        }
    }
    t.elapsed()
}

/// Followers that never read, followers that read slowly (a sleep after each wake-up)
/// and streams left unread do not slow the writer: its time with them is measured
/// against its time without them, interleaved round by round on the same log (the
/// disk has fast and slow spells). The bound is loose (3x the median), since this is
/// a test and not a benchmark; the figures are printed.
#[test]
fn followers_that_never_read_or_read_slowly_do_not_slow_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = Arc::new(open(&m, small_cfg(tmp.path())));
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut slow_wakeups = 0u64;
    for round in 0..5u64 {
        without.push(timed_writer(&aof, 2 * round));

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let idle: Vec<_> = (0..64).map(|_| aof.tail_follower()).collect();
        let streams: Vec<_> = (0..8)
            .map(|_| SealedSegmentStream::new(&aof).unwrap())
            .collect();
        let slow: Vec<_> = (0..8)
            .map(|_| {
                let mut f = aof.tail_follower();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match f.next_blocking() {
                            Some(st) if !st.ended => n += 1,
                            _ => break,
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    n
                })
            })
            .collect();
        with.push(timed_writer(&aof, 2 * round + 1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // One more durable advance wakes the slow followers to see `stop`.
        let rid = aof.append_record(b"wake").unwrap();
        aof.flush_until(rid).unwrap();
        for h in slow {
            slow_wakeups += within(Duration::from_secs(10), "slow follower", move || {
                h.join().unwrap()
            });
        }
        drop((idle, streams));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut without), median(&mut with));
    println!(
        "writer alone {a:.1?}, with 64 idle followers, 8 slow ones and 8 unread streams {b:.1?} \
         ({:.2}x; medians of 5 interleaved rounds; slow followers woke {slow_wakeups} times)",
        b.as_secs_f64() / a.as_secs_f64()
    );
    assert!(slow_wakeups > 0, "the slow followers followed");
    assert!(
        b <= a * 3,
        "followers slowed the writer: {b:?} against {a:?} without them"
    );
    // Nothing was lost or reordered for them.
    let all = all_records(&aof);
    assert_eq!(all.len(), 10 * 300 + 5, "every record is in the log");
}

#[test]
fn a_corrupt_frame_is_an_error_naming_segment_offset_and_path() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manager();
    let mut rids = Vec::new();
    {
        let aof = open(&m, small_cfg(tmp.path()));
        for i in 0..40 {
            rids.push(aof.append_record(&payload(3, i)).unwrap());
        }
        aof.flush().unwrap();
        aof.seal_active().unwrap();
    }
    // Damage the payload of record 10 of segment 0 (sealed, so reopening trusts its
    // footer and only reading finds the damage).
    let victim = rids[10];
    let path = tmp.path().join("segments/00000000000000000000.seg");
    flip(&path, victim.segment_offset() as u64 + 40);
    let aof = open(&m, small_cfg(tmp.path()));
    let reader = aof.open_reader(SegmentId::new(0)).unwrap();
    match reader.read_record(victim) {
        Err(AofError::Corruption {
            path: p,
            segment: 0,
            offset,
            ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(offset, victim.segment_offset() as u64);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert!(
        reader.read_record(rids[9]).is_ok(),
        "its neighbours still read"
    );
    let mut c = SegmentCursor::new(reader);
    for _ in 0..10 {
        c.next().unwrap().unwrap();
    }
    let e = c.next().expect_err("the cursor stops at the damaged frame");
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(&victim.segment_offset().to_string()), "{msg}");
    assert!(c.next().is_err(), "and stays stopped: nothing is skipped");
    // The stream reports it too.
    let mut s = SealedSegmentStream::new(&aof).unwrap();
    let mut c = s.next_segment_blocking().unwrap().unwrap().into_cursor();
    let mut n = 0;
    let err = loop {
        match c.next() {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("the damaged record was skipped"),
            Err(e) => break e,
        }
    };
    assert_eq!(n, 10);
    assert!(matches!(err, AofError::Corruption { .. }));
}
