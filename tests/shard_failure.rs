//! A failing shard never hangs anyone. A panic on a shard thread (injected through a
//! test hook, as a broken invariant would panic) or a ring that loses a completion
//! poisons every log on that shard with an error naming the shard and the cause, and
//! every call waiting on those logs returns that error: blocked and async
//! `flush_until`, `flush`, an append held by back-pressure, `close`, tail followers and
//! streams. Logs on the other shard keep working, new logs go there, records
//! acknowledged before the failure are all back after a reopen, and dropping the
//! manager returns.

mod common;

use aof2_shards::config::{AofManagerConfig, CommitMode, IoBackend, RecordId};
use aof2_shards::error::AofError;
use aof2_shards::log_handle::LogHandle;
use aof2_shards::manager::ShardSet;
use aof2_shards::shard::ShardFault;
use aof2_shards::stream::SealedSegmentStream;
use aof2_shards::tail::TailFollower;
use common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The backends to run on: the one `AOF2_BACKEND` names, or both.
fn backends() -> Vec<IoBackend> {
    match std::env::var("AOF2_BACKEND").as_deref() {
        Ok("sync") => vec![IoBackend::Sync],
        Ok("uring") | Ok("io_uring") => vec![IoBackend::Uring],
        _ => vec![IoBackend::Uring, IoBackend::Sync],
    }
}

fn shard_set(backend: IoBackend) -> Option<Arc<ShardSet>> {
    init_log();
    let mut cfg = AofManagerConfig::default();
    cfg.shards = 2;
    cfg.backend = backend;
    match ShardSet::start(&cfg) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) if backend == IoBackend::Uring => {
            assert!(
                std::env::var("AOF2_REQUIRE_URING").as_deref() != Ok("1"),
                "io_uring required: {e}"
            );
            eprintln!("io_uring unavailable ({e}); skipping that backend");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A log that only syncs when asked (no interval, no watermark before back-pressure),
/// and only on its shard: every waiter below waits for the shard.
fn quiet_cfg(root: &Path) -> bop_rs::aof2::AofConfig {
    let mut c = small_cfg(root);
    c.flush.flush_interval_ms = 0;
    c.flush.max_unflushed_bytes = 256 * 1024;
    c.flush.flush_watermark_bytes = 256 * 1024;
    c.commit = CommitMode::Shard;
    c
}

fn open_log(set: &ShardSet, root: &Path) -> Arc<LogHandle> {
    Arc::new(LogHandle::open(set, quiet_cfg(root)).expect("log opens"))
}

/// Checks that `e` is the poison of a log whose shard failed with `cause`.
fn is_shard_failure(e: &AofError, shard: usize, cause: &str) -> bool {
    let msg = e.to_string();
    matches!(e, AofError::Poisoned { .. })
        && msg.contains(&format!("shard thread {shard} failed"))
        && msg.contains(cause)
}

fn fail_a_shard_under_load(backend: IoBackend, fault: ShardFault, cause: &str) {
    let Some(set) = shard_set(backend) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    // Placement goes to the shard with the fewest logs: a and c share one, b the other.
    let a = open_log(&set, &d.path().join("a"));
    let b = open_log(&set, &d.path().join("b"));
    let c = open_log(&set, &d.path().join("c"));
    let victim = a.shard_id();
    assert_eq!(c.shard_id(), victim);
    assert_ne!(b.shard_id(), victim);

    let mut acked: Vec<(RecordId, Vec<u8>)> = Vec::new();
    for i in 0..100u64 {
        let p = payload(1, i);
        let rid = a.append(&p).unwrap();
        acked.push((rid, p));
    }
    a.flush_until(acked.last().unwrap().0).unwrap();
    let unsynced = a.append(b"never synced").unwrap();
    // c's first append waits for its first segment's file: before the shard pauses.
    c.append(&payload(3, 0)).unwrap();

    // Hold the shard still, so that every call below is waiting when it fails.
    set.shards()[victim].inject(ShardFault::Pause(Duration::from_millis(500)));
    std::thread::sleep(Duration::from_millis(50));
    let mut waiters: Vec<(&str, std::thread::JoinHandle<Result<(), String>>)> = Vec::new();
    let spawn = |f: Box<dyn FnOnce() -> Result<(), String> + Send>| std::thread::spawn(f);
    {
        let a = a.clone();
        waiters.push((
            "flush_until",
            spawn(Box::new(move || {
                a.flush_until(unsynced).map_err(|e| e.to_string())
            })),
        ));
    }
    {
        let a = a.clone();
        waiters.push((
            "flush",
            spawn(Box::new(move || a.flush().map_err(|e| e.to_string()))),
        ));
    }
    {
        let a = a.clone();
        waiters.push((
            "flush_until_async",
            spawn(Box::new(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(a.flush_until_async(unsynced))
                    .map_err(|e| e.to_string())
            })),
        ));
    }
    {
        let mut f = TailFollower::new(a.view());
        waiters.push((
            "tail follower",
            spawn(Box::new(move || {
                while let Some(st) = f.next_blocking() {
                    if st.ended {
                        return Err(f.error().map(|e| e.to_string()).unwrap_or_default());
                    }
                }
                Ok(())
            })),
        ));
    }
    {
        let mut f = TailFollower::new(a.view());
        waiters.push((
            "sealed-segment follower",
            spawn(Box::new(move || {
                while f.next_sealed_segment_blocking().is_some() {}
                Err(f.error().map(|e| e.to_string()).unwrap_or_default())
            })),
        ));
    }
    {
        let mut s = SealedSegmentStream::new(a.view());
        waiters.push((
            "stream",
            spawn(Box::new(move || loop {
                match s.next_segment_blocking() {
                    Ok(Some(seg)) => {
                        let mut cur = seg.into_cursor();
                        while let Ok(Some(_)) = cur.next() {}
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                }
            })),
        ));
    }
    {
        // An append held by back-pressure: c's unflushed bytes at the limit, or its next
        // segment's file not prepared (the shard is paused).
        let c2 = c.clone();
        // (c's first record, appended before the pause, opened its first segment.)
        let mut n = 1u64;
        // Until it would wait: at the cap, or for its next segment's file.
        loop {
            match c.try_append(&payload(3, n)) {
                Ok(_) => n += 1,
                Err(AofError::WouldBlock(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        waiters.push((
            "append under back-pressure",
            spawn(Box::new(move || {
                c2.append(&payload(3, n))
                    .map(drop)
                    .map_err(|e| e.to_string())
            })),
        ));
    }
    {
        let c = c.clone();
        waiters.push((
            "close",
            spawn(Box::new(move || {
                // Whether it saw the failure depends on timing: it must return.
                let _ = c.close();
                Err("closed".into())
            })),
        ));
    }
    std::thread::sleep(Duration::from_millis(100));
    set.shards()[victim].inject(fault);

    for (what, h) in waiters {
        let r = within(Duration::from_secs(10), what, move || h.join().unwrap());
        let msg = r.expect_err(what);
        if what == "close" {
            continue;
        }
        assert!(
            msg.contains(&format!("shard thread {victim} failed")) && msg.contains(cause),
            "{what} got: {msg}"
        );
    }

    // The failed shard's logs refuse everything, naming the shard and the cause.
    let e = a.append(b"after").unwrap_err();
    assert!(is_shard_failure(&e, victim, cause), "{e}");
    assert!(set.shards()[victim].failure().is_some());
    let e = within(Duration::from_secs(10), "close of a failed log", {
        let a = a.clone();
        move || a.close()
    })
    .expect_err("close reports the failure");
    assert!(is_shard_failure(&e, victim, cause), "{e}");

    // The other shard is untouched, and new logs go there.
    let rid = b.append(b"still fine").unwrap();
    b.flush_until(rid).unwrap();
    let n = open_log(&set, &d.path().join("n"));
    assert_ne!(n.shard_id(), victim);
    let rid = n.append(b"a new log").unwrap();
    n.flush_until(rid).unwrap();

    // Everything acknowledged before the failure is back (reopened on a working shard).
    let a = open_log(&set, &d.path().join("a"));
    assert_ne!(a.shard_id(), victim);
    for (rid, p) in &acked {
        let r = a
            .open_reader(aof2_shards::config::SegmentId::new(
                rid.segment_index() as u64
            ))
            .unwrap();
        assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..]);
    }
    drop((a, b, c, n));
    within(Duration::from_secs(20), "dropping the manager", move || {
        drop(set)
    });
}

#[test]
fn a_panicking_shard_poisons_its_logs_and_every_waiter_returns() {
    for backend in backends() {
        fail_a_shard_under_load(backend, ShardFault::Panic, "a panic injected");
    }
}

#[test]
fn a_ring_that_loses_a_completion_poisons_its_logs_instead_of_wedging() {
    for backend in backends() {
        let cause = match backend {
            IoBackend::Uring => "dropped 1 completion",
            _ => "an executor failure injected",
        };
        fail_a_shard_under_load(backend, ShardFault::LostCompletion, cause);
    }
}

#[test]
fn when_every_shard_has_failed_opening_a_log_is_a_clear_error() {
    let Some(set) = shard_set(backends()[0]) else {
        return;
    };
    for s in set.shards() {
        s.inject(ShardFault::Panic);
    }
    let t = std::time::Instant::now();
    while set.shards().iter().any(|s| s.failure().is_none()) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the shards did not fail"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let d = tempfile::tempdir().unwrap();
    let e = LogHandle::open(&set, quiet_cfg(d.path())).err().unwrap();
    let msg = e.to_string();
    assert!(
        matches!(e, AofError::ShardFailed { .. }) && msg.contains("every shard thread has failed"),
        "{msg}"
    );
}

/// With callers committing their own appends, a shard that fails still poisons its
/// logs: a caller's commit that completes after the poison reports nothing durable,
/// every later call gets the shard's error, and nothing waits for ever.
#[test]
fn callers_that_commit_themselves_see_their_shards_failure_too() {
    for backend in backends() {
        let Some(set) = shard_set(backend) else {
            continue;
        };
        let d = tempfile::tempdir().unwrap();
        let mut c = quiet_cfg(d.path());
        c.commit = CommitMode::Caller;
        let log = Arc::new(LogHandle::open(&set, c).unwrap());
        let victim = log.shard_id();
        let rid = log.append(b"before").unwrap();
        log.flush_until(rid).unwrap();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0.. {
                        let r = log
                            .append(&payload(t, i))
                            .and_then(|rid| log.flush_until(rid));
                        if let Err(e) = r {
                            return e.to_string();
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        set.shards()[victim].inject(ShardFault::Panic);
        for w in writers {
            let msg = within(Duration::from_secs(10), "a committing caller", move || {
                w.join().unwrap()
            });
            assert!(
                msg.contains(&format!("shard thread {victim} failed")),
                "{msg}"
            );
        }
        let e = within(Duration::from_secs(10), "close", move || log.close())
            .expect_err("close reports the failure");
        assert!(
            e.to_string()
                .contains(&format!("shard thread {victim} failed")),
            "{e}"
        );
    }
}

/// A broken invariant in one log (a panic while its shard polls it) poisons that log
/// only: its waiters get the panic's message, while the shard and the other logs on it
/// go on appending and syncing; the broken log closes, and a reopen brings back every
/// record acknowledged before the panic.
#[test]
fn a_panic_in_one_log_poisons_that_log_and_its_shard_neighbours_go_on() {
    for backend in backends() {
        let Some(set) = shard_set(backend) else {
            continue;
        };
        let d = tempfile::tempdir().unwrap();
        // Placement goes to the shard with the fewest logs: a and c share one.
        let a = open_log(&set, &d.path().join("a"));
        let b = open_log(&set, &d.path().join("b"));
        let c = open_log(&set, &d.path().join("c"));
        let shard = a.shard_id();
        assert_eq!(c.shard_id(), shard);
        let mut acked = Vec::new();
        for i in 0..50u64 {
            let p = payload(1, i);
            acked.push((a.append(&p).unwrap(), p));
        }
        a.flush_until(acked.last().unwrap().0).unwrap();
        let c0 = c.append(b"c before").unwrap();
        c.flush_until(c0).unwrap();

        // A waiter on `a` when it breaks: released with the error, never hung.
        let unsynced = a.append(b"never synced").unwrap();
        a.inject_panic();
        let a2 = a.clone();
        let msg = within(
            Duration::from_secs(10),
            "flush_until on the broken log",
            move || a2.flush_until(unsynced).unwrap_err().to_string(),
        );
        assert!(
            msg.contains("a panic injected into log") && msg.contains("internal error"),
            "{msg}"
        );
        let e = a.append(b"after").unwrap_err();
        assert!(matches!(e, AofError::Poisoned { .. }), "{e}");

        // The neighbour on the same shard, and the log on the other one, go on.
        for i in 0..200u64 {
            let rid = c.append(&payload(3, i)).unwrap();
            if i % 20 == 0 {
                c.flush_until(rid).unwrap();
            }
            let rid = b.append(&payload(2, i)).unwrap();
            if i % 20 == 0 {
                b.flush_until(rid).unwrap();
            }
        }
        c.flush().unwrap();
        b.flush().unwrap();
        assert!(set.shards()[shard].failure().is_none(), "the shard lives");

        // The broken log closes (its lock is released), and a reopen recovers it.
        let a2 = a.clone();
        let e = within(
            Duration::from_secs(10),
            "close of the broken log",
            move || a2.close(),
        )
        .expect_err("close reports the failure");
        assert!(matches!(e, AofError::Poisoned { .. }), "{e}");
        drop(a);
        let a = open_log(&set, &d.path().join("a"));
        for (rid, p) in &acked {
            let r = a
                .open_reader(bop_rs::aof2::config::SegmentId::new(
                    rid.segment_index() as u64
                ))
                .unwrap();
            assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..]);
        }
        let rid = a.append(b"after the reopen").unwrap();
        a.flush_until(rid).unwrap();
    }
}
