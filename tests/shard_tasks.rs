//! Tasks on the shards (`AofManager::spawn_on_shard`): results, `!Send` state, panics,
//! placement (`AofConfig::shard`, `CommitMode::Auto`), blocking calls refused on a
//! shard's thread, appends from a task on the log's own shard with no eventfd write,
//! no wake-up from another thread and one `io_uring_enter` per commit, across shards,
//! a task that never stops waking itself, and shutdown with tasks pending. Every test
//! runs on the backend `AOF2_BACKEND` selects.

mod common;

use bop_rs::aof2::config::{AofConfig, AofManagerConfig, CommitMode};
use bop_rs::aof2::{Aof, AofError, AofManager, ShardStats};
use common::*;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

fn two_shards() -> AofManager {
    init_log();
    let mut c = AofManagerConfig::default();
    c.shards = 2;
    AofManager::with_config(c).expect("manager starts")
}

/// A log on shard `shard` with the default configuration but its directory.
fn placed(m: &AofManager, root: &std::path::Path, shard: usize) -> Arc<Aof> {
    let mut c = AofConfig::default();
    c.root_dir = root.to_path_buf();
    c.shard = Some(shard);
    Arc::new(open(m, c))
}

/// Ready on its second poll: one trip through the shard's ready queue.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Never ready.
struct Never;

impl Future for Never {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

fn stats(m: &AofManager, shard: usize) -> ShardStats {
    m.shard_stats()[shard]
}

#[test]
fn a_task_runs_on_its_shard_thread_and_returns_its_result() {
    let m = two_shards();
    for shard in 0..2 {
        let t = m
            .spawn_on_shard(shard, move || async move {
                // `!Send` state held across an await: the task never leaves the thread.
                let local = Rc::new(shard * 10);
                YieldOnce(false).await;
                (
                    *local + 1,
                    std::thread::current().name().map(str::to_string),
                )
            })
            .unwrap();
        assert_eq!(t.shard(), shard);
        let (v, name) = t.join().unwrap();
        assert_eq!(v, shard * 10 + 1);
        assert_eq!(name.as_deref(), Some(&*format!("aof2-shard-{shard}")));
    }
    // Awaited from a Tokio runtime, too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = m.handle().spawn_on_shard(1, || async { 7u32 }).unwrap();
    assert_eq!(rt.block_on(t).unwrap(), 7);
    let s = stats(&m, 0);
    assert_eq!((s.tasks_spawned, s.tasks_ended), (1, 1));
}

#[test]
fn a_panicking_task_is_an_error_and_its_shard_runs_the_next() {
    let m = two_shards();
    let t = m
        .spawn_on_shard(0, || async {
            YieldOnce(false).await;
            panic!("the task's own bug");
        })
        .unwrap();
    let e = t.join().unwrap_err();
    assert!(
        matches!(&e, AofError::TaskPanicked { shard: 0, cause } if cause.contains("the task's own bug")),
        "{e}"
    );
    let t = m
        .spawn_on_shard(0, || -> std::future::Ready<()> { panic!("in the closure") })
        .unwrap();
    assert!(matches!(t.join(), Err(AofError::TaskPanicked { .. })));
    // The shard lives on: its log and its next task work.
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    let l = log.clone();
    let rid = m
        .spawn_on_shard(0, move || async move {
            let rid = l.append_record_async(b"after the panics").await?;
            l.flush_until_async(rid).await?;
            Ok::<_, AofError>(rid)
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(read_back(&log, rid), b"after the panics");
}

#[test]
fn a_shard_past_the_last_is_a_clear_error() {
    let m = two_shards();
    let e = m.spawn_on_shard(2, || async {}).unwrap_err();
    assert!(
        matches!(
            e,
            AofError::NoSuchShard {
                shard: 2,
                shards: 2
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("no shard 2"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let mut c = AofConfig::default();
    c.root_dir = dir.path().to_path_buf();
    c.shard = Some(5);
    let e = Aof::new(m.handle(), c).expect_err("refused");
    assert!(
        matches!(
            e,
            AofError::NoSuchShard {
                shard: 5,
                shards: 2
            }
        ),
        "{e}"
    );
    // Nothing was left behind: the directory opens on a real shard afterwards.
    let log = placed(&m, dir.path(), 1);
    assert_eq!(log.shard(), 1);
}

#[test]
fn placement_and_auto_commit_mode() {
    let m = two_shards();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pinned = placed(&m, a.path(), 1);
    assert_eq!(pinned.shard(), 1);
    assert_eq!(pinned.config().commit, CommitMode::Shard);
    let mut c = AofConfig::default();
    c.root_dir = b.path().to_path_buf();
    assert_eq!(c.commit, CommitMode::Auto);
    let free = open(&m, c);
    assert!(free.shard() < 2);
    assert_eq!(free.config().commit, CommitMode::Caller);
    // An explicit mode is kept whatever the placement.
    drop(free);
    let mut c = AofConfig::default();
    c.root_dir = b.path().to_path_buf();
    c.shard = Some(0);
    c.commit = CommitMode::Caller;
    assert_eq!(open(&m, c).config().commit, CommitMode::Caller);
}

#[test]
fn blocking_calls_in_a_task_are_refused_not_deadlocked() {
    let m = two_shards();
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    let other = m.spawn_on_shard(1, || Never).unwrap();
    let l = log.clone();
    let t = m
        .spawn_on_shard(0, move || async move {
            let rid = l.append_record_async(b"x").await.unwrap();
            let flush = l.flush_until(rid);
            let all = l.flush();
            let joined = other.join();
            (flush, all, joined)
        })
        .unwrap();
    let (flush, all, joined) = t.join().unwrap();
    for r in [flush, all, joined.map(|_| ())] {
        assert!(
            matches!(r, Err(AofError::WouldDeadlock { shard: 0, .. })),
            "{r:?}"
        );
    }
}

/// A task on the log's own shard appends and waits for each record: no eventfd write
/// (but the spawn's), no wake-up from another thread, and (on io_uring) at most 1.2
/// `io_uring_enter` per commit while no file is being zero-filled (a busy log
/// zero-fills its next file in pieces spread over most of each segment, and each
/// piece's completion is a wake-up too). So the log starts with a 16 MiB segment: its
/// next file is prepared only once that is a quarter full, after the window measured.
#[test]
fn a_task_on_its_logs_shard_commits_with_no_hop() {
    let m = two_shards();
    let dir = tempfile::tempdir().unwrap();
    let mut c = AofConfig::default();
    c.root_dir = dir.path().to_path_buf();
    c.shard = Some(0);
    c.segment_min_bytes = 16 << 20;
    let log = Arc::new(open(&m, c));
    // Appends and awaits `n` records of 4 KiB in one task; their ids.
    let run = |n: u32| {
        let l = log.clone();
        m.spawn_on_shard(0, move || async move {
            let mut rids = Vec::new();
            for i in 0..n {
                let rid = l.append_record_async(&[i as u8; 4096]).await.unwrap();
                l.flush_until_async(rid).await.unwrap();
                rids.push(rid);
            }
            rids
        })
        .unwrap()
        .join()
        .unwrap()
    };
    const N: u32 = 400;
    for attempt in 0.. {
        // Warm up until the next segment's file is ready (nothing left to zero-fill).
        let zeroed = log.flush_metrics().bytes_zeroed;
        run(200);
        if log.flush_metrics().bytes_zeroed != zeroed && attempt < 40 {
            continue;
        }
        let (before, m0) = (stats(&m, 0), log.flush_metrics());
        let rids = run(N);
        let (after, m1) = (stats(&m, 0), log.flush_metrics());
        assert_eq!(read_back(&log, rids[123]), vec![123u8; 4096]);
        assert!(
            m1.syncs - m0.syncs >= N as u64,
            "each awaited record was synced"
        );
        assert!(
            after.eventfd_wakeups - before.eventfd_wakeups <= 1,
            "only the spawn woke the shard through its eventfd: {before:?} -> {after:?}"
        );
        assert_eq!(
            after.foreign_task_wakeups, before.foreign_task_wakeups,
            "no wake-up came from another thread"
        );
        if m1.bytes_zeroed != m0.bytes_zeroed || m1.segments_sealed != m0.segments_sealed {
            assert!(attempt < 40, "the log never settled");
            continue; // a roll or a preparation fell in the window: measure again
        }
        if m.io_backend() == "io_uring" {
            let enters = after.ring_enters - before.ring_enters;
            let per_commit = enters as f64 / N as f64;
            assert!(
                per_commit <= 1.2,
                "{enters} io_uring_enter calls for {N} commits ({per_commit:.2} each)"
            );
        }
        break;
    }
}

/// Sixteen tasks on the log's shard append and wait in a loop: the tasks a commit
/// releases append again and one next commit carries them all.
#[test]
fn tasks_a_commit_releases_are_carried_by_one_next_commit() {
    let m = two_shards();
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    const TASKS: u64 = 16;
    const ROUNDS: u64 = 40;
    let syncs = log.flush_metrics().syncs;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let l = log.clone();
            m.spawn_on_shard(0, move || async move {
                for r in 0..ROUNDS {
                    let rid = l.append_record_async(&[(t + r) as u8; 512]).await.unwrap();
                    l.flush_until_async(rid).await.unwrap();
                }
            })
            .unwrap()
        })
        .collect();
    for t in tasks {
        t.join().unwrap();
    }
    let syncs = log.flush_metrics().syncs - syncs;
    // One commit per round, plus the first segment's header and preparation.
    assert!(
        syncs <= ROUNDS * 3 / 2 + 4,
        "{syncs} syncs for {ROUNDS} rounds of {TASKS} tasks"
    );
    assert_eq!(log.flush_metrics().records_appended, TASKS * ROUNDS);
}

/// A task on shard 1 appends to and waits on a log on shard 0: one message into
/// shard 0's inbox, one wake-up back.
#[test]
fn a_task_appends_to_a_log_on_another_shard() {
    let m = two_shards();
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    let l = log.clone();
    let before = stats(&m, 1);
    let rids = m
        .spawn_on_shard(1, move || async move {
            let mut rids = Vec::new();
            for i in 0..100u32 {
                let rid = l.append_record_async(&i.to_le_bytes()).await?;
                l.flush_until_async(rid).await?;
                rids.push(rid);
            }
            // A blocking wait here would stall shard 1: refused.
            assert!(matches!(
                l.flush(),
                Err(AofError::WouldDeadlock { shard: 1, .. })
            ));
            Ok::<_, AofError>(rids)
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    for (i, rid) in rids.iter().enumerate() {
        assert_eq!(read_back(&log, *rid), (i as u32).to_le_bytes());
    }
    let after = stats(&m, 1);
    assert!(
        after.foreign_task_wakeups - before.foreign_task_wakeups <= 100 + 2,
        "at most one wake-up back per wait: {before:?} -> {after:?}"
    );
}

/// A task that wakes itself forever does not starve the shard's logs or other tasks.
#[test]
fn a_task_that_never_stops_waking_itself_does_not_starve_the_shard() {
    let m = two_shards();
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let spinner = m
        .spawn_on_shard(0, move || {
            std::future::poll_fn(move |cx| {
                if s.load(std::sync::atomic::Ordering::Relaxed) {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })
        })
        .unwrap();
    let t0 = Instant::now();
    let l = log.clone();
    let worker = m
        .spawn_on_shard(0, move || async move {
            for i in 0..20u8 {
                let rid = l.append_record_async(&[i; 100]).await.unwrap();
                l.flush_until_async(rid).await.unwrap();
            }
        })
        .unwrap();
    worker.join().unwrap();
    // A foreign thread's flush goes through too.
    let rid = log.append_record(b"foreign").unwrap();
    log.flush_until(rid).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spinner.join().unwrap();
}

/// Dropping the manager drains the logs, then drops the tasks still pending: their
/// handles return `TaskCancelled`, and the drop returns.
#[test]
fn dropping_the_manager_cancels_pending_tasks() {
    let m = two_shards();
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    let rid = log.append_record(b"before shutdown").unwrap();
    let pending: Vec<_> = (0..4)
        .map(|i| m.spawn_on_shard(i % 2, || Never).unwrap())
        .collect();
    let detached = m.spawn_on_shard(0, || Never).unwrap();
    drop(detached);
    let t0 = Instant::now();
    drop(m);
    assert!(t0.elapsed() < Duration::from_secs(10));
    for t in pending {
        let e = t.join().unwrap_err();
        assert!(matches!(e, AofError::TaskCancelled { .. }), "{e}");
    }
    // The log drained first: its record is durable.
    drop(log);
    let m = two_shards();
    let log = placed(&m, dir.path(), 1);
    assert_eq!(read_back(&log, rid), b"before shutdown");
    let e = {
        drop(log);
        drop(m);
        let m = two_shards();
        let h = m.handle();
        drop(m);
        h.spawn_on_shard(0, || async {}).unwrap_err()
    };
    assert!(e.to_string().contains("shut down"), "{e}");
}

/// A blocking flusher on a foreign thread and an async flusher in a task on the log's
/// shard, with no flush interval, in both commit modes: neither stalls.
#[test]
fn a_foreign_blocking_flusher_and_a_pinned_async_flusher_share_a_log() {
    for commit in [CommitMode::Auto, CommitMode::Caller] {
        let m = two_shards();
        let dir = tempfile::tempdir().unwrap();
        let mut c = AofConfig::default();
        c.root_dir = dir.path().to_path_buf();
        c.shard = Some(0);
        c.commit = commit;
        c.flush.flush_interval_ms = 0;
        let log = Arc::new(open(&m, c));
        let l = log.clone();
        let task = m
            .spawn_on_shard(0, move || async move {
                for i in 0..300u32 {
                    let rid = l.append_record_async(&i.to_le_bytes()).await.unwrap();
                    l.flush_until_async(rid).await.unwrap();
                }
            })
            .unwrap();
        let t0 = Instant::now();
        for i in 0..300u32 {
            let rid = log.append_record(&i.to_be_bytes()).unwrap();
            log.flush_until(rid).unwrap();
        }
        task.join().unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{commit:?}: {:?}",
            t0.elapsed()
        );
        assert_eq!(log.flush_metrics().records_appended, 600);
    }
}

/// Soak: 64 tasks on shard 0 appending and waiting, on 1 log and on 16 logs, with
/// `DEFER_TASKRUN` on and off (where the kernel has it), while a thread on the same
/// directory runs `pwrite` + `fdatasync` as a yardstick of the disk's own stalls. Every
/// record comes back, and the longest wait of a task for its flush stays within 50 ms
/// of (logs + 1) times the yardstick's longest sync (a flush may wait for the commit
/// of every log before its own, the disk taking their cache flushes one at a time; a
/// shard that stopped reaping would show as a wait far beyond anything the disk did). `AOF2_TASK_SOAK_SECS` (default 1) is the time per
/// case; `scripts/soak.sh` runs it for 60 s per case.
#[test]
fn soak_64_tasks_on_one_and_sixteen_logs() {
    let secs: u64 = std::env::var("AOF2_TASK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for defer in [true, false] {
        for logs in [1usize, 16] {
            soak_case(defer, logs, Duration::from_secs(secs));
        }
    }
}

fn soak_case(defer: bool, n_logs: usize, run: Duration) {
    use bop_rs::aof2::config::UringFeature;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    init_log();
    let mut mc = AofManagerConfig::default();
    mc.shards = 2;
    if !defer {
        mc.io_uring_disable = vec![UringFeature::DeferTaskrun];
    }
    let m = AofManager::with_config(mc).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<Arc<Aof>> = (0..n_logs)
        .map(|i| placed(&m, &dir.path().join(format!("log-{i}")), 0))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // The disk's own stalls, measured beside the tasks.
    let yard = {
        let (stop, path) = (stop.clone(), dir.path().join("yardstick"));
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            f.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
            f.sync_all().unwrap();
            let mut longest = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                f.write_all_at(&[7u8; 4096], (i % 256) * 4096).unwrap();
                f.sync_data().unwrap();
                longest = longest.max(t.elapsed());
                i += 1;
            }
            longest
        })
    };
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let (l, s) = (logs[t as usize % n_logs].clone(), stop.clone());
            m.spawn_on_shard(0, move || async move {
                let mut longest = Duration::ZERO;
                let mut rids = Vec::new();
                let mut seq = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let mut p = t.to_le_bytes().to_vec();
                    p.extend_from_slice(&seq.to_le_bytes());
                    p.resize(16 + (seq as usize * 37) % 3000, t as u8);
                    let rid = l.append_record_async(&p).await.unwrap();
                    let w = Instant::now();
                    l.flush_until_async(rid).await.unwrap();
                    longest = longest.max(w.elapsed());
                    rids.push((rid, p));
                    seq += 1;
                }
                (longest, rids)
            })
            .unwrap()
        })
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let yard = yard.join().unwrap();
    let mut longest = Duration::ZERO;
    let mut all = Vec::new();
    for (t, task) in tasks.into_iter().enumerate() {
        let (l, rids) = task.join().unwrap();
        longest = longest.max(l);
        all.push((t % n_logs, rids));
    }
    let s = stats(&m, 0);
    eprintln!(
        "soak defer={defer} logs={n_logs}: {} records, longest flush wait {longest:?}, \
         yardstick's longest sync {yard:?}, {s:?}",
        all.iter().map(|(_, r)| r.len()).sum::<usize>()
    );
    // A flush may wait for every log's commit before its own: the portable backend
    // runs them one after another, and on io_uring the disk takes their cache flushes
    // one at a time.
    let rounds = n_logs as u32 + 1;
    assert!(
        longest <= yard * rounds + Duration::from_millis(50),
        "a task waited {longest:?} for a flush; the disk's longest sync beside it took {yard:?}"
    );
    for (i, rids) in &all {
        assert!(!rids.is_empty(), "a task acknowledged nothing");
        for (rid, p) in rids.iter().step_by(97) {
            assert_eq!(&read_back(&logs[*i], *rid), p);
        }
    }
}

/// A log's timers (the flush interval, idle buffers given back) fire on every executor.
#[test]
fn a_logs_timers_fire_with_nobody_calling() {
    let m = two_shards();
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    log.append_record(b"left to the interval").unwrap();
    let t0 = Instant::now();
    while log.flush_metrics().flushes_interval == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the 5 ms flush interval never fired"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    while log.flush_metrics().idle_buffer_releases == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "a quiet log never gave its buffers back"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
