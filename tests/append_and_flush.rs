//! Appending, flushing and reading back on a real disk, with real threads. Several
//! tests pin a defect of the earlier implementation (REFERENCE.md) so it cannot return.

mod common;

use bop_rs::aof2::config::SegmentId;
use bop_rs::aof2::error::{AofError, WouldBlockKind};
use bop_rs::aof2::RecordId;
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Earlier defect 1: automatic rollover stalled for good once two segments filled.
#[test]
fn rollover_through_dozens_of_segments_without_stalling() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = Arc::new(open(&m, small_cfg(dir.path())));
    let a = aof.clone();
    let rids = within(
        Duration::from_secs(60),
        "appending 4 MiB through 64 KiB segments",
        move || {
            let mut rids = Vec::new();
            for seq in 0..2000u64 {
                rids.push((seq, a.append_record(&payload(1, seq)).unwrap()));
            }
            a.flush_until(rids.last().unwrap().1).unwrap();
            rids
        },
    );
    let segments = rids.last().unwrap().1.segment_index();
    assert!(
        segments >= 40,
        "only {segments} segments: the test must cross dozens"
    );
    for (seq, rid) in &rids {
        assert_eq!(
            read_back(&aof, *rid),
            payload(1, *seq),
            "record {seq} at {rid}"
        );
    }
    // The async path rolls too.
    let a = aof.clone();
    within(
        Duration::from_secs(60),
        "async appends across rolls",
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut last = None;
                for seq in 0..500u64 {
                    last = Some(a.append_record_async(&payload(2, seq)).await.unwrap());
                }
                a.flush_until_async(last.unwrap()).await.unwrap();
            })
        },
    );
    assert!(aof.flush_metrics().segments_sealed >= 40);
}

/// Earlier defect 2: concurrent appenders on one log corrupted data.
#[test]
fn eight_threads_appending_to_one_aof_read_back_intact() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = Arc::new(open(&m, small_cfg(dir.path())));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let aof = aof.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for seq in 0..1500u64 {
                    let rid = aof.append_record(&payload(t, seq)).unwrap();
                    if seq % 97 == 0 {
                        aof.flush_until(rid).unwrap();
                    }
                    mine.push((t, seq, rid));
                }
                mine
            })
        })
        .collect();
    let all: Vec<(u64, u64, RecordId)> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    aof.flush().unwrap();
    let mut rids: Vec<RecordId> = all.iter().map(|x| x.2).collect();
    rids.sort();
    rids.dedup();
    assert_eq!(rids.len(), all.len(), "every append got its own id");
    // Read back in this session (sealed and active segments) and after reopening.
    for (t, seq, rid) in &all {
        assert_eq!(
            read_back(&aof, *rid),
            payload(*t, *seq),
            "thread {t} record {seq}"
        );
    }
    drop(aof);
    let aof = open(&m, small_cfg(dir.path()));
    for (t, seq, rid) in &all {
        assert_eq!(
            read_back(&aof, *rid),
            payload(*t, *seq),
            "after reopen: thread {t} record {seq}"
        );
    }
}

/// Earlier defect 3: a record larger than a segment poisoned the log.
#[test]
fn oversize_record_is_refused_and_the_log_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    let max = aof.config().max_record_bytes();
    match aof.append_record(&vec![0u8; max + 1]) {
        Err(AofError::RecordTooLarge { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    // Larger than a target segment but within the max: it gets a segment of its own.
    let big = vec![0xabu8; 300 * 1024];
    let r1 = aof.append_record(&big).unwrap();
    let r2 = aof.append_record(b"small after big").unwrap();
    aof.flush_until(r2).unwrap();
    assert_eq!(read_back(&aof, r1), big);
    assert_eq!(read_back(&aof, r2), b"small after big");
    assert_eq!(aof.flush_metrics().failures, 0);
}

/// Earlier defect 5: back-pressure used block_on and panicked inside a runtime.
#[test]
fn async_appends_past_max_unflushed_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(dir.path());
    cfg.flush.max_unflushed_bytes = 64 * 1024;
    cfg.flush.flush_watermark_bytes = 32 * 1024;
    cfg.flush.flush_interval_ms = 0;
    let aof = Arc::new(open(&m, cfg));
    let a = aof.clone();
    let n = within(
        Duration::from_secs(60),
        "async appends under back-pressure",
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut n = 0u64;
                for seq in 0..3000u64 {
                    a.append_record_async(&payload(3, seq)).await.unwrap();
                    n += 1;
                }
                n
            })
        },
    );
    assert_eq!(n, 3000);
    assert!(
        aof.flush_metrics().backpressure_waits > 0,
        "the cap was reached, so appends waited"
    );
}

#[test]
fn try_append_reports_the_cap_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(dir.path());
    // Rolls are rare: the cap is what stops it.
    cfg.segment_min_bytes = 1024 * 1024;
    cfg.segment_target_bytes = 1024 * 1024;
    cfg.flush.max_unflushed_bytes = 64 * 1024;
    cfg.flush.flush_watermark_bytes = 64 * 1024;
    cfg.flush.flush_interval_ms = 0;
    let aof = open(&m, cfg);
    // The first segment's file is prepared for the first append (a try_ append would
    // get WouldBlock(Rollover) meanwhile).
    aof.flush_until(aof.append_record(b"first").unwrap())
        .unwrap();
    let big = vec![1u8; 20 * 1024];
    let mut appended = 0;
    let e = loop {
        match aof.try_append_record(&big) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 100, "the 64 KiB cap never applied");
    };
    assert!(
        matches!(e, AofError::WouldBlock(WouldBlockKind::Admission)),
        "{e}"
    );
    assert!(appended >= 3, "admitted up to the cap first");
}

/// Earlier defect 5, multi-threaded runtime: many tasks, one log.
#[test]
fn many_tokio_tasks_append_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = Arc::new(open(&m, small_cfg(dir.path())));
    let a = aof.clone();
    let all = within(Duration::from_secs(60), "tokio tasks", move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async move {
            let tasks: Vec<_> = (0..32u64)
                .map(|t| {
                    let a = a.clone();
                    tokio::spawn(async move {
                        let mut v = Vec::new();
                        for seq in 0..50u64 {
                            let rid = a.append_record_async(&payload(t, seq)).await.unwrap();
                            a.flush_until_async(rid).await.unwrap();
                            v.push((t, seq, rid));
                        }
                        v
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        })
    });
    for (t, seq, rid) in all {
        assert_eq!(read_back(&aof, rid), payload(t, seq));
    }
}

/// Earlier defect 6: flush_until sometimes hung (check-then-wait lost wake-ups).
#[test]
fn flush_until_never_misses_a_wake_up_under_bursts() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(dir.path());
    cfg.flush.flush_interval_ms = 0; // only explicit flushes move the durable position
    let aof = Arc::new(open(&m, cfg));
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let aof = aof.clone();
            std::thread::spawn(move || {
                for burst in 0..40u64 {
                    let mut last = None;
                    for i in 0..(1 + (burst + t) % 7) {
                        last = Some(aof.append_record(&payload(t, burst * 10 + i)).unwrap());
                    }
                    aof.flush_until(last.unwrap()).unwrap();
                }
            })
        })
        .collect();
    within(
        Duration::from_secs(60),
        "16 threads x 40 bursts of append + flush_until",
        move || {
            for t in threads {
                t.join().unwrap();
            }
        },
    );
}

/// Earlier defect 7: the interval flush ran only when another append arrived.
#[test]
fn the_interval_flush_syncs_with_no_further_calls() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(dir.path());
    cfg.flush.flush_interval_ms = 5;
    let aof = open(&m, cfg);
    let rid = aof.append_record(b"left alone").unwrap();
    let start = Instant::now();
    while aof.flush_metrics().flushes_interval == 0 || aof.flush_metrics().backlog_bytes > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the interval flush never ran"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The record is durable: flush_until returns at once, without a new sync.
    let syncs = aof.flush_metrics().syncs;
    aof.flush_until(rid).unwrap();
    assert_eq!(aof.flush_metrics().syncs, syncs);
}

#[test]
fn flush_until_an_id_past_the_tail_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    let rid = aof.append_record(b"x").unwrap();
    for bad in [
        RecordId::from_parts(rid.segment_index() + 3, 64),
        RecordId::from_parts(rid.segment_index(), 60_000),
        RecordId::from_parts(0, 3),
    ] {
        let e = aof.flush_until(bad).unwrap_err();
        assert!(matches!(e, AofError::RecordNotFound { .. }), "{bad}: {e}");
    }
}

#[test]
fn empty_records_are_allowed_and_read_back_empty() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    let a = aof.append_record(b"").unwrap();
    let b = aof.append_record(b"after empty").unwrap();
    assert!(b > a);
    aof.flush_until(b).unwrap();
    assert_eq!(read_back(&aof, a), b"");
    assert_eq!(read_back(&aof, b), b"after empty");
}

#[test]
fn readers_see_the_active_segment_up_to_its_durable_end_and_sealed_ones_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = small_cfg(dir.path());
    cfg.flush.flush_interval_ms = 0;
    let aof = open(&m, cfg);
    let durable = aof.append_record(b"durable").unwrap();
    aof.flush_until(durable).unwrap();
    let pending = aof.append_record(b"not yet synced").unwrap();
    let seg = SegmentId::new(durable.segment_index() as u64);
    let r = aof.open_reader(seg).unwrap();
    assert!(!r.is_sealed());
    assert_eq!(r.read_record(durable).unwrap().payload(), b"durable");
    assert!(
        r.read_record(pending).is_err(),
        "past the durable end at open"
    );
    assert_eq!(aof.seal_active().unwrap(), Some(seg));
    let r = aof.open_reader(seg).unwrap();
    assert!(r.is_sealed());
    assert_eq!(r.read_record(pending).unwrap().payload(), b"not yet synced");
    let ts = r.read_record(durable).unwrap().timestamp();
    assert!(ts > 1_600_000_000_000_000_000 && ts <= r.read_record(pending).unwrap().timestamp());
    assert!(matches!(
        aof.open_reader(SegmentId::new(99)),
        Err(AofError::SegmentNotFound { .. })
    ));
    assert_eq!(
        aof.seal_active().unwrap(),
        None,
        "nothing appended since the seal"
    );
}

#[test]
fn dropping_the_manager_first_closes_logs_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    let rid = aof.append_record(b"before shutdown").unwrap();
    drop(m); // flushes and closes every log
    assert!(matches!(
        aof.append_record(b"after"),
        Err(AofError::Closed { .. })
    ));
    aof.flush_until(rid).expect("the shutdown flush covered it");
    drop(aof);
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    assert_eq!(read_back(&aof, rid), b"before shutdown");
}

/// `completion_poll_us`: waits poll before they sleep; every commit, the shard's and
/// a caller's, still reports only what a completed sync covers.
#[test]
fn with_completion_polling_on_shard_and_caller_commits_are_durable_and_counted() {
    use bop_rs::aof2::config::CommitMode;
    use bop_rs::aof2::{AofManager, AofManagerConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut mcfg = AofManagerConfig::default();
    mcfg.completion_poll_us = 200;
    let m = AofManager::with_config(mcfg).unwrap();
    for (i, mode) in [CommitMode::Shard, CommitMode::Caller]
        .into_iter()
        .enumerate()
    {
        let mut cfg = small_cfg(&dir.path().join(format!("log{i}")));
        cfg.commit = mode;
        let aof = open(&m, cfg);
        let mut rids = Vec::new();
        for seq in 0..200u64 {
            let r = aof.append_record(&payload(i as u64, seq)).unwrap();
            aof.flush_until(r).unwrap();
            assert!(
                aof.tail_state().durable > r,
                "{r} durable once flush_until returns"
            );
            rids.push((seq, r));
        }
        for (seq, r) in rids {
            assert_eq!(read_back(&aof, r), payload(i as u64, seq));
        }
    }
    let polls: u64 = m
        .shard_stats()
        .iter()
        .map(|s| s.poll_hits + s.poll_misses)
        .sum();
    if m.io_backend() == "io_uring" && !m.executor().is_glommio() {
        assert!(polls > 0, "the shards' waits polled");
    } else {
        assert_eq!(polls, 0, "only io_uring rings on threads poll");
    }
}

/// `preallocate_segments`: the first file is prepared from the open, so an append
/// made once it is ready does not wait (a `try_` append gets no `Rollover`). A session
/// closed before any append keeps that file for the next session, which uses its id.
#[test]
fn a_preallocated_first_file_takes_the_first_append_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = bop_rs::aof2::config::AofConfig::default();
    cfg.root_dir = dir.path().join("log");
    cfg.preallocate_segments = true;
    let first = cfg.root_dir.join("segments").join(format!("{:020}.seg", 0));
    let wait_for = |what: &str, ready: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what} never happened"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    {
        let aof = open(&m, cfg.clone());
        wait_for("the first file prepared at open", &|| first.exists());
        aof.close().unwrap();
    }
    let aof = open(&m, cfg.clone());
    let rid = std::cell::Cell::new(None);
    wait_for("the kept file adopted", &|| {
        match aof.try_append_record(b"first") {
            Ok(r) => rid.set(Some(r)),
            Err(AofError::WouldBlock(WouldBlockKind::Rollover)) => {}
            Err(e) => panic!("{e}"),
        }
        rid.get().is_some()
    });
    let rid = rid.get().unwrap();
    assert_eq!(rid.segment_index(), 0, "the first session's file is used");
    aof.flush_until(rid).unwrap();
    assert_eq!(read_back(&aof, rid), b"first");
    let files = std::fs::read_dir(cfg.root_dir.join("segments"))
        .unwrap()
        .count();
    assert_eq!(files, 1, "one segment file");
}

/// `preallocate_segments`, a log closed at once after each open (its first file's
/// preparation cut short at any step): no file piles up, the ids stay dense and the
/// log takes records after.
#[test]
fn opening_and_closing_at_once_with_preallocate_segments_piles_up_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = bop_rs::aof2::config::AofConfig::default();
    cfg.root_dir = dir.path().join("log");
    cfg.segment_min_bytes = 64 * 1024;
    cfg.preallocate_segments = true;
    for i in 0..30 {
        let aof = open(&m, cfg.clone());
        if i % 3 == 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        aof.close().unwrap();
    }
    let aof = open(&m, cfg.clone());
    let rid = aof.append_record(b"after").unwrap();
    aof.flush_until(rid).unwrap();
    assert_eq!(read_back(&aof, rid), b"after");
    assert_eq!(
        rid.segment_index(),
        0,
        "ids stay dense across sessions that appended nothing: {rid}"
    );
    aof.close().unwrap();
    let files: Vec<_> = std::fs::read_dir(cfg.root_dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["00000000000000000000.seg"], "files piled up");
}

/// A busy log with the default sizes, on a manager with no registered arena (memory
/// the portable backend and a shard whose arena other logs hold run without): its
/// buffers grow with its segments (64 KiB to 1 MiB) and then come back from its own
/// spares, so appending 20 MiB more allocates none.
#[test]
fn a_grown_log_reuses_its_buffers_without_an_arena() {
    let dir = tempfile::tempdir().unwrap();
    let mut mc = bop_rs::aof2::AofManagerConfig::default();
    mc.registered_buffer_bytes = 0;
    let m = bop_rs::aof2::AofManager::with_config(mc).unwrap();
    let mut cfg = bop_rs::aof2::config::AofConfig::default();
    cfg.root_dir = dir.path().join("log");
    let aof = open(&m, cfg);
    let rec = vec![7u8; 4096];
    let append_mib = |mib: u64| {
        for i in 0..mib * 256 {
            let rid = aof.append_record(&rec).unwrap();
            if i % 16 == 15 {
                aof.flush_until(rid).unwrap();
            }
        }
        aof.flush().unwrap();
    };
    // 1 + 1 + 2 + 4 + 8 MiB segments, then into the first 16 MiB one.
    append_mib(24);
    let grown = aof.flush_metrics().buffers_allocated;
    append_mib(20);
    assert_eq!(
        aof.flush_metrics().buffers_allocated,
        grown,
        "a grown log allocated buffers again"
    );
}
