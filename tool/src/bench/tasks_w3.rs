//! T1's W3 shape: 64 writers on one shard, as 64 tasks, as 64 futures joined in one
//! task and as 64 threads, against one thread writing 64 buffered 4 KiB records per
//! `fdatasync` (and, as information, one 256 KiB O_DIRECT write + `fdatasync` per 64
//! records), on a new log and in recycled segments.

use super::baseline::*;
use super::report::*;
use super::{rotate, BenchResult, Ctx};
use bop_rs::aof2::config::{CommitMode, RetentionPolicy};
use bop_rs::aof2::Aof;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Polls every future of a set until all are done (64 writers in one task).
struct JoinAll<F> {
    futs: Vec<Option<Pin<Box<F>>>>,
}

impl<F: Future<Output = ()>> Future for JoinAll<F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut pending = false;
        for slot in self.futs.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    pending = true;
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// One writer's loop as a future: appends 4 KiB and waits until `stop`.
async fn writer(l: Arc<Aof>, stop: Arc<AtomicBool>) -> u64 {
    let payload = vec![0x33u8; 4096];
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let r = l.append_record_async(&payload).await.expect("append");
        l.flush_until_async(r).await.expect("flush");
        n += 1;
    }
    n
}

/// The W3 shape on shard `shard`: on new logs (after 200 records), or in recycled
/// segments (`Size` retention of 128 MiB, after 192 MiB of warm-up, so new segments
/// start in released files with nothing to zero-fill).
pub fn w3_on_shard(ctx: &Ctx, shard: usize, recycled: bool) -> BenchResult<Vec<Row>> {
    const WRITERS: usize = 64;
    let slice = ctx.duration() / ctx.rounds() as u32;
    let cfg = |c: &mut bop_rs::aof2::config::AofConfig| {
        c.shard = Some(shard);
        if recycled {
            c.retention = RetentionPolicy::Size {
                max_total_bytes: 128 << 20,
            };
        }
    };
    let log = Arc::new(ctx.open_with(cfg)?);
    let threads_log = Arc::new(ctx.open_with(|c| {
        cfg(c);
        c.commit = CommitMode::Caller;
    })?);
    let warm = if recycled { 192 } else { 1 };
    for l in [&log, &threads_log] {
        let big = vec![0x11u8; if recycled { 1 << 20 } else { 4096 }];
        for _ in 0..(if recycled { warm } else { 200 }) {
            let r = l.append_record(&big)?;
            l.flush_until(r)?;
        }
    }
    let g = ctx.baseline_file("t1-w3-buffered", 64 << 20)?;
    let g = g.buffered(&ctx.root.join("t1-w3-buffered"))?;
    let block = AlignedBlock::new(4096);
    let mut goff = 0u64;
    // Records of the tasks and the joined futures in all, for records per sync.
    let (mut n_tasks, mut n_joined) = (0u64, 0u64);
    // Records/s per round, each contender: the rows are medians over rounds.
    let (mut r_tasks, mut r_joined, mut r_threads, mut r_buf, mut r_direct) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let m0 = log.flush_metrics();
    let mut run_tasks = || -> BenchResult<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks = (0..WRITERS)
            .map(|_| {
                let (l, s) = (log.clone(), stop.clone());
                ctx.manager.spawn_on_shard(shard, move || writer(l, s))
            })
            .collect::<Result<Vec<_>, _>>()?;
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        let mut n = 0;
        for t in tasks {
            n += t.join()?;
        }
        n_tasks += n;
        r_tasks.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    let mut run_joined = || -> BenchResult<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let (l, s) = (log.clone(), stop.clone());
        let task = ctx.manager.spawn_on_shard(shard, move || async move {
            let counts = Arc::new(std::sync::Mutex::new(0u64));
            let futs = (0..WRITERS)
                .map(|_| {
                    let (l, s, c) = (l.clone(), s.clone(), counts.clone());
                    Some(Box::pin(async move {
                        let n = writer(l, s).await;
                        *c.lock().expect("counts") += n;
                    }))
                })
                .collect();
            JoinAll { futs }.await;
            let n = *counts.lock().expect("counts");
            n
        })?;
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        let n = task.join()?;
        n_joined += n;
        r_joined.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    let mut run_threads = || -> BenchResult<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let threads: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (l, s) = (threads_log.clone(), stop.clone());
                std::thread::spawn(move || -> Result<u64, String> {
                    let payload = vec![0x33u8; 4096];
                    let mut n = 0;
                    while !s.load(Ordering::Relaxed) {
                        let r = l.append_record(&payload).map_err(|e| e.to_string())?;
                        l.flush_until(r).map_err(|e| e.to_string())?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        let mut n = 0;
        for t in threads {
            n += t.join().map_err(|_| "writer thread panicked")??;
        }
        r_threads.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    // One 256 KiB O_DIRECT write + fdatasync per 64 records: what one commit of 64
    // records costs the disk at best.
    let d = ctx.baseline_file("t1-w3-direct", 64 << 20)?;
    let big = AlignedBlock::new(WRITERS * 4096);
    let mut doff = 0u64;
    let mut run_direct = || -> BenchResult<()> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < slice {
            d.file.write_all_at(big.bytes(), doff % d.size)?;
            doff += big.bytes().len() as u64;
            fdatasync(&d.file)?;
            n += WRITERS as u64;
        }
        r_direct.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    let mut run_buffered = || -> BenchResult<()> {
        let start = Instant::now();
        let n = buffered_per_sync(&g, &block, WRITERS, &mut goff, slice)?;
        r_buf.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    rotate(
        ctx.rounds(),
        &mut [
            &mut run_tasks,
            &mut run_joined,
            &mut run_threads,
            &mut run_buffered,
            &mut run_direct,
        ],
    )?;
    let m1 = log.flush_metrics();
    let zeroed_mib = (m1.bytes_zeroed - m0.bytes_zeroed) as f64 / (1 << 20) as f64;
    let desc = "one thread: 64 buffered 4 KiB pwrites + 1 fdatasync";
    let row = |workload, rates: &[f64]| {
        rounds_row(
            workload,
            "durable records/s",
            "rec/s",
            (rates, &r_buf),
            true,
            desc,
        )
    };
    let per_sync = (n_tasks + n_joined) as f64 / (m1.syncs - m0.syncs).max(1) as f64;
    let names: [&'static str; 3] = if recycled {
        [
            "T1 W3 recycled: 64 tasks on the log's shard",
            "T1 W3 recycled: 64 futures in one task",
            "T1 W3 recycled: 64 threads (Caller)",
        ]
    } else {
        [
            "T1 W3 new log: 64 tasks on the log's shard",
            "T1 W3 new log: 64 futures in one task",
            "T1 W3 new log: 64 threads (Caller)",
        ]
    };
    let info = |metric, v: f64, what| info_row(names[0], metric, v, true, what);
    Ok(vec![
        row(names[0], &r_tasks),
        row(names[1], &r_joined),
        row(names[2], &r_threads),
        info(
            "records per sync",
            per_sync,
            "(tasks and joined futures together)",
        ),
        info(
            "writes per sync",
            (m1.write_ops - m0.write_ops) as f64 / (m1.syncs - m0.syncs).max(1) as f64,
            "(data writes of the tasks' log per sync: 1 when each commit is one write)",
        ),
        info(
            "vs 64 threads",
            median_ratio(&r_tasks, &r_threads),
            "(64 tasks' records/s over 64 threads', median of per-round ratios)",
        ),
        info(
            "vs 256 KiB O_DIRECT",
            median_ratio(&r_tasks, &r_direct),
            "(64 tasks' records/s over one 256 KiB O_DIRECT pwrite + fdatasync per 64 records, median of per-round ratios)",
        ),
        info(
            "MiB zero-filled",
            zeroed_mib,
            "(by the tasks' log while measured: 0 when every segment was recycled)",
        ),
    ])
}
