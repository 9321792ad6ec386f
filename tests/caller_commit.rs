//! Caller-driven commit (`CommitMode::Caller`): a thread waiting for durability runs
//! the write + sync itself when no other is in flight, and its completion releases
//! every waiter it covers.
//!
//! - A caller's failed sync poisons the log for every waiter, not only the caller.
//! - Many waiters share each sync: with 64 threads appending and waiting, syncs are
//!   far fewer than records.
//! - By default a caller commits with system calls of its own and gets no ring; with
//!   polling on, it commits on a ring of its own, and threads past the bound on caller
//!   rings commit through the shard, never an error.

mod common;

use aof2_shards::clock::Clock;
use aof2_shards::config::{AofConfig, AofManagerConfig, CommitMode, IoBackend};
use aof2_shards::error::AofError;
use aof2_shards::fs::sim::{Faults, SimFs};
use aof2_shards::fs::Fs;
use aof2_shards::log_handle::LogHandle;
use aof2_shards::manager::ShardSet;
use common::*;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// A log only callers commit: no interval flush, no watermark before back-pressure.
fn caller_cfg(root: &Path) -> AofConfig {
    let mut c = small_cfg(root);
    c.flush.flush_interval_ms = 0;
    c.flush.flush_watermark_bytes = 1 << 20;
    c.flush.max_unflushed_bytes = 1 << 20;
    c.commit = CommitMode::Caller;
    c
}

#[test]
fn a_callers_failed_sync_poisons_the_log_for_every_waiter() {
    init_log();
    // The portable executor on the simulated disk, whose faults the test sets.
    let fs = SimFs::new(7);
    fs.mkdir(Path::new("/sim"), 0o700).unwrap();
    fs.fsync_dir(Path::new("/")).unwrap();
    let mut mcfg = AofManagerConfig::default();
    mcfg.shards = 1;
    mcfg.backend = IoBackend::Sync;
    let set = ShardSet::start_with(&mcfg, Arc::new(fs.clone())).unwrap();
    let log = Arc::new(
        LogHandle::open_with(
            &set,
            caller_cfg(Path::new("/sim/log")),
            Arc::new(fs.clone()),
            Clock::System,
            1,
        )
        .unwrap(),
    );
    // A first round: the segment's header is durable, callers commit from here on.
    let rid = log.append(b"first").unwrap();
    log.flush_until(rid).unwrap();
    let syncs_before = log.metrics().syncs;

    fs.set_faults(Faults {
        fail_sync_after: Some(0),
        ..Faults::default()
    });
    let n = 8;
    let start = Arc::new(Barrier::new(n));
    let waiters: Vec<_> = (0..n)
        .map(|t| {
            let (log, start) = (log.clone(), start.clone());
            std::thread::spawn(move || {
                let rid = log.append(&payload(t as u64, 0)).unwrap();
                start.wait();
                log.flush_until(rid)
            })
        })
        .collect();
    for w in waiters {
        let r = within(Duration::from_secs(10), "a waiter", move || {
            w.join().unwrap()
        });
        let e = r.expect_err("nothing after the failed sync is durable");
        assert!(
            matches!(e, AofError::Poisoned { .. }) && e.to_string().contains("Input/output error"),
            "{e}"
        );
    }
    assert_eq!(
        log.metrics().syncs,
        syncs_before,
        "no sync completed after the fault"
    );
    assert!(log.metrics().failures >= 1);
    assert!(matches!(log.append(b"x"), Err(AofError::Poisoned { .. })));
    // Closing reports it too, every time.
    for _ in 0..2 {
        assert!(matches!(log.close(), Err(AofError::Poisoned { .. })));
    }
}

/// 64 threads appending and waiting share each sync; a sync wakes the waiters it
/// releases and one more (the next leader), not all of them; with polling on, the
/// committers' own rings run the commits.
#[test]
fn many_waiters_share_each_sync_and_wake_only_whom_it_concerns() {
    many_waiters_share_each_sync(AofManagerConfig::default());
}

#[test]
fn many_waiters_committing_on_polled_rings_share_each_sync() {
    let mut mcfg = AofManagerConfig::default();
    mcfg.completion_poll_us = 20;
    many_waiters_share_each_sync(mcfg);
}

fn many_waiters_share_each_sync(mcfg: AofManagerConfig) {
    init_log();
    let set = Arc::new(ShardSet::start(&mcfg).unwrap());
    let d = tempfile::tempdir().unwrap();
    let mut c = caller_cfg(d.path());
    c.segment_target_bytes = 16 << 20;
    c.segment_max_bytes = 16 << 20;
    let log = Arc::new(LogHandle::open(&set, c).unwrap());
    let enters = |set: &ShardSet| {
        set.caller_rings()
            .map(|r| r.counts().enters.load(std::sync::atomic::Ordering::Relaxed))
    };
    let enters_before = enters(&set);
    let threads = 64;
    let per_thread = 40;
    let start = Arc::new(Barrier::new(threads));
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let (log, start) = (log.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..per_thread {
                    let rid = log.append(&[t as u8; 4096]).unwrap();
                    log.flush_until(rid).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        within(Duration::from_secs(60), "a writer", move || {
            w.join().unwrap()
        });
    }
    let m = log.metrics();
    let records = (threads * per_thread) as u64;
    let enters = enters(&set).zip(enters_before).map(|(a, b)| a - b);
    println!(
        "{records} durable records from {threads} threads in {} syncs ({:.1} records per sync); \
         {} caller commits, {enters:?} io_uring_enter calls of caller rings; \
         {} waiter wake-ups, {} of them spurious ({:.2} per sync)",
        m.syncs,
        records as f64 / m.syncs as f64,
        m.caller_commits,
        m.waiter_wakeups,
        m.spurious_wakeups,
        m.spurious_wakeups as f64 / m.syncs as f64
    );
    assert!(
        m.syncs * 4 <= records,
        "64 waiting threads share syncs: {} syncs for {records} records",
        m.syncs
    );
    assert!(
        m.spurious_wakeups <= 2 * m.syncs,
        "a sync wakes whom it releases and one more: {} spurious wake-ups for {} syncs",
        m.spurious_wakeups,
        m.syncs
    );
    // With polling, callers commit on their own rings (and enter them more than once
    // per commit while they poll).
    if let Some(enters) = enters {
        assert!(
            enters >= m.caller_commits && m.caller_commits > 0,
            "{enters} io_uring_enter calls for {} caller commits",
            m.caller_commits
        );
    }
}

/// The default: a committing caller makes its own system calls and no thread gets a
/// ring (an `RWF_DSYNC` write on a ring of its own would wait for a kernel worker).
#[test]
fn a_caller_commits_with_its_own_system_calls_by_default() {
    init_log();
    let set = Arc::new(ShardSet::start(&AofManagerConfig::default()).unwrap());
    let d = tempfile::tempdir().unwrap();
    let log = LogHandle::open(&set, caller_cfg(d.path())).unwrap();
    for i in 0..20 {
        let rid = log.append(&payload(1, i)).unwrap();
        log.flush_until(rid).unwrap();
    }
    let m = log.metrics();
    assert!(
        m.caller_commits >= 10,
        "{} of 20 commits ran on the caller",
        m.caller_commits
    );
    assert!(
        set.caller_rings().is_none(),
        "no caller ring without polling"
    );
    assert_eq!(m.backlog_bytes, 0, "everything is durable");
}

#[test]
fn threads_past_the_bound_on_caller_rings_commit_through_the_shard() {
    init_log();
    let mut mcfg = AofManagerConfig::default();
    mcfg.caller_rings = 2;
    // Callers take rings only to poll them.
    mcfg.completion_poll_us = 20;
    let set = match ShardSet::start(&mcfg) {
        Ok(s) => Arc::new(s),
        Err(e) => panic!("{e}"),
    };
    let d = tempfile::tempdir().unwrap();
    let log = Arc::new(LogHandle::open(&set, caller_cfg(d.path())).unwrap());
    let start = Arc::new(Barrier::new(8));
    let writers: Vec<_> = (0..8u64)
        .map(|t| {
            let (log, start, set) = (log.clone(), start.clone(), set.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..50 {
                    let rid = log.append(&payload(t, i)).unwrap();
                    log.flush_until(rid).unwrap();
                }
                set.caller_rings().map_or(0, |r| r.live())
            })
        })
        .collect();
    for w in writers {
        let live = within(Duration::from_secs(60), "a writer", move || {
            w.join().unwrap()
        });
        assert!(live <= 2, "{live} caller rings: the bound is 2");
    }
    // Eight threads made 400 records durable, six of them without a ring of their own.
    assert_eq!(log.metrics().records_appended, 400);
    assert!(log.metrics().backlog_bytes == 0, "everything is durable");
}
