//! T1: appends from a task pinned on the log's own shard (`spawn_on_shard`), against a
//! foreign thread and the raw loop on a thread pinned to the same CPU.
//!
//! - W2 shape, on each shard's CPU: one writer appending 4 KiB and waiting, as a task
//!   on the shard, as an unpinned foreign thread committing itself (`Caller`), and as
//!   `pwrite` + `fdatasync` on a thread pinned to the shard's CPU; the three rotate in
//!   slices.
//! - W3 shape (`tasks_w3.rs`): 64 writers on one shard as tasks, joined futures and
//!   threads, against the buffered 64-per-sync loop.
//! - W1 shape (100-byte appends), W2 across shards, and a task's cold read.

use super::baseline::*;
use super::report::*;
use super::{rotate, BenchResult, Ctx};
use bop_rs::aof2::config::CommitMode;
use bop_rs::aof2::{AofManager, ShardStats};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub fn t1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let mut rows = Vec::new();
    let cpus = ctx.manager.shard_cpus();
    // Each part's logs go once it has finished (`tidy`): together they fill a few GiB.
    for (shard, cpu) in cpus.iter().enumerate().take(2) {
        rows.extend(w2_on_shard(ctx, shard, *cpu)?);
        ctx.tidy()?;
    }
    if cpus.len() >= 2 {
        rows.extend(w2_across(ctx, cpus[1])?);
        ctx.tidy()?;
    }
    rows.extend(w1_on_shard(ctx, 0)?);
    ctx.tidy()?;
    rows.extend(cold_reads(ctx, 0)?);
    ctx.tidy()?;
    rows.extend(super::tasks_w3::w3_on_shard(ctx, 0, false)?);
    ctx.tidy()?;
    rows.extend(super::tasks_w3::w3_on_shard(ctx, 0, true)?);
    Ok(rows)
}

fn stats(m: &AofManager, shard: usize) -> ShardStats {
    m.shard_stats()[shard]
}

/// Runs `f` on a thread pinned to `cpu` (unpinned if `None`).
fn on_cpu<T: Send>(cpu: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(id) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id });
            }
            f()
        })
        .join()
        .expect("bench thread panicked")
    })
}

/// One slice of the W2 shape from a task on shard `shard`: `n` durable 4 KiB appends
/// to `log`, each one's latency recorded.
fn task_w2_slice(
    ctx: &Ctx,
    shard: usize,
    log: &Arc<bop_rs::aof2::Aof>,
    n: usize,
) -> BenchResult<hdrhistogram::Histogram<u64>> {
    let l = log.clone();
    let h = ctx
        .manager
        .spawn_on_shard(shard, move || async move {
            let payload = vec![0x42u8; 4096];
            let mut h = hist();
            for _ in 0..n {
                let t = Instant::now();
                let r = l.append_record_async(&payload).await?;
                l.flush_until_async(r).await?;
                h.record(t.elapsed().as_nanos() as u64).expect("in bounds");
            }
            Ok::<_, bop_rs::aof2::AofError>(h)
        })?
        .join()??;
    Ok(h)
}

fn w2_on_shard(ctx: &Ctx, shard: usize, cpu: Option<usize>) -> BenchResult<Vec<Row>> {
    let (per_round, rounds) = if ctx.quick { (250, 2) } else { (250, 20) };
    let task_log = Arc::new(ctx.open_with(|c| c.shard = Some(shard))?);
    let thread_log = ctx.open_with(|c| {
        c.shard = Some(shard);
        c.commit = CommitMode::Caller;
    })?;
    let f = ctx.baseline_file(&format!("t1-w2-baseline-{shard}"), 64 << 20)?;
    let payload = vec![0x42u8; 4096];
    let block = AlignedBlock::new(4096);
    // Warm-up past the first small segments (as W2 does).
    for _ in 0..1000 {
        let r = thread_log.append_record(&payload)?;
        thread_log.flush_until(r)?;
        let r = task_log.append_record(&payload)?;
        task_log.flush_until(r)?;
    }
    // One histogram per slice, each contender; the rows merge them into five rounds.
    let (mut task_h, mut thread_h, mut raw_h) = (Vec::new(), Vec::new(), Vec::new());
    let mut off = 0u64;
    let (s0, m0) = (stats(&ctx.manager, shard), task_log.flush_metrics());
    let mut run_task = || -> BenchResult<()> {
        task_h.push(task_w2_slice(ctx, shard, &task_log, per_round)?);
        Ok(())
    };
    let mut run_thread = || -> BenchResult<()> {
        let mut h = hist();
        for _ in 0..per_round {
            let t = Instant::now();
            let r = thread_log.append_record(&payload)?;
            thread_log.flush_until(r)?;
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        thread_h.push(h);
        Ok(())
    };
    let mut run_raw = || -> BenchResult<()> {
        let mut h = hist();
        on_cpu(cpu, || {
            raw_4k_syncs(&f, &block, per_round, &mut off, &mut h).map_err(|e| e.to_string())
        })?;
        raw_h.push(h);
        Ok(())
    };
    // glommio's own durable write, where the feature is built: `DmaFile` write of 4 KiB
    // + `fdatasync` from a glommio executor pinned to the shard's CPU.
    #[cfg(feature = "glommio")]
    let dma_h = std::cell::RefCell::new(Vec::new());
    #[cfg(feature = "glommio")]
    let dma_path = ctx.root.join(format!("t1-w2-dma-{shard}"));
    #[cfg(feature = "glommio")]
    let mut run_dma = || -> BenchResult<()> {
        let h = dma_slice(&dma_path, cpu, per_round)?;
        dma_h.borrow_mut().push(h);
        Ok(())
    };
    #[cfg(feature = "glommio")]
    rotate(
        rounds,
        &mut [&mut run_task, &mut run_thread, &mut run_raw, &mut run_dma],
    )?;
    #[cfg(not(feature = "glommio"))]
    rotate(rounds, &mut [&mut run_task, &mut run_thread, &mut run_raw])?;
    let (s1, m1) = (stats(&ctx.manager, shard), task_log.flush_metrics());
    let commits = (m1.syncs - m0.syncs).max(1) as f64;
    let (wt, wf): (&'static str, &'static str) = match shard {
        0 => (
            "T1 W2 task on shard 0 (CPU of shard 0)",
            "T1 W2 foreign thread, log on shard 0",
        ),
        _ => (
            "T1 W2 task on shard 1 (CPU of shard 1)",
            "T1 W2 foreign thread, log on shard 1",
        ),
    };
    let desc = "pwrite 4 KiB + fdatasync, thread pinned to the shard's CPU";
    let mut rows = Vec::new();
    for (w, h) in [(wt, &task_h), (wf, &thread_h)] {
        rows.extend(LatencyRounds::of_slices(h, &raw_h, 5).rows(w, &P50_P99_P999, desc));
    }
    #[cfg(feature = "glommio")]
    {
        let wd = if shard == 0 {
            "T1 W2 glommio DmaFile on shard 0's CPU"
        } else {
            "T1 W2 glommio DmaFile on shard 1's CPU"
        };
        let dma_h = dma_h.borrow();
        rows.extend(LatencyRounds::of_slices(&dma_h, &raw_h, 5).rows(wd, &P50_P99_P999, desc));
    }
    let info = |metric, v: f64, what| info_row(wt, metric, v, false, what);
    rows.push(info(
        "enters/commit",
        (s1.ring_enters - s0.ring_enters) as f64 / commits,
        "(the shard's io_uring_enter calls per sync of the task's log, both logs' commits included)",
    ));
    rows.push(info(
        "eventfd/commit",
        (s1.eventfd_wakeups - s0.eventfd_wakeups) as f64 / commits,
        "(the shard's eventfd wake-ups per sync of the task's log; the foreign thread's count)",
    ));
    Ok(rows)
}

/// One slice of glommio's `DmaFile` 4 KiB write + `fdatasync` into a pre-written file,
/// from a glommio executor pinned to `cpu`.
#[cfg(feature = "glommio")]
fn dma_slice(
    path: &std::path::Path,
    cpu: Option<usize>,
    n: usize,
) -> BenchResult<hdrhistogram::Histogram<u64>> {
    let placement = match cpu {
        Some(c) => glommio::Placement::Fixed(c),
        None => glommio::Placement::Unbound,
    };
    let path = path.to_path_buf();
    let h = glommio::LocalExecutorBuilder::new(placement)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let f = glommio::io::OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .dma_open(&path)
                .await
                .map_err(|e| e.to_string())?;
            if f.file_size().await.map_err(|e| e.to_string())? < 64 << 20 {
                for i in 0..64u64 {
                    let mut b = f.alloc_dma_buffer(1 << 20);
                    b.as_bytes_mut().fill(0);
                    f.write_at(b, i << 20).await.map_err(|e| e.to_string())?;
                }
                f.fdatasync().await.map_err(|e| e.to_string())?;
            }
            let mut h = hist();
            for i in 0..n as u64 {
                let t = Instant::now();
                let mut b = f.alloc_dma_buffer(4096);
                b.as_bytes_mut().fill(0x5a);
                f.write_at(b, (i * 4096) % (64 << 20))
                    .await
                    .map_err(|e| e.to_string())?;
                f.fdatasync().await.map_err(|e| e.to_string())?;
                h.record(t.elapsed().as_nanos() as u64)
                    .map_err(|e| e.to_string())?;
            }
            f.close().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(h)
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())??;
    Ok(h)
}

/// W1 shape: 100-byte records appended with no flush wait, by a task on the log's
/// shard and by a foreign thread on a log of the same shard: records/s and the
/// appending thread's CPU ns per record.
fn w1_on_shard(ctx: &Ctx, shard: usize) -> BenchResult<Vec<Row>> {
    let slice = ctx.duration() / ctx.rounds() as u32;
    let task_log = Arc::new(ctx.open_with(|c| c.shard = Some(shard))?);
    let thread_log = ctx.open_with(|c| {
        c.shard = Some(shard);
        c.commit = CommitMode::Caller;
    })?;
    // Per round, each side: records/s and CPU ns per record (the rows: medians).
    let (mut r_task, mut c_task, mut r_thread, mut c_thread) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut run_task = || -> BenchResult<()> {
        let l = task_log.clone();
        let (n, t, cpu) = ctx
            .manager
            .spawn_on_shard(shard, move || async move {
                let payload = [0x5au8; 100];
                let (start, c0) = (Instant::now(), thread_cpu_ns());
                let mut n = 0u64;
                while start.elapsed() < slice {
                    for _ in 0..1024 {
                        l.append_record_async(&payload).await?;
                    }
                    n += 1024;
                    // A well-behaved task lets its shard turn between bursts.
                    YieldNow(false).await;
                }
                Ok::<_, bop_rs::aof2::AofError>((n, start.elapsed(), thread_cpu_ns() - c0))
            })?
            .join()??;
        r_task.push(n as f64 / t.as_secs_f64());
        c_task.push(cpu as f64 / n.max(1) as f64);
        Ok(())
    };
    let mut run_thread = || -> BenchResult<()> {
        let payload = [0x5au8; 100];
        let (start, c0) = (Instant::now(), thread_cpu_ns());
        let mut n = 0u64;
        while start.elapsed() < slice {
            for _ in 0..1024 {
                thread_log.append_record(&payload)?;
            }
            n += 1024;
        }
        r_thread.push(n as f64 / start.elapsed().as_secs_f64());
        c_thread.push((thread_cpu_ns() - c0) as f64 / n.max(1) as f64);
        Ok(())
    };
    rotate(ctx.rounds(), &mut [&mut run_task, &mut run_thread])?;
    let w = "T1 W1 100 B appends, task on the log's shard";
    Ok(vec![
        rounds_row(
            w,
            "records/s",
            "rec/s",
            (&r_task, &r_thread),
            true,
            "a foreign thread appending to a log on the same shard",
        ),
        rounds_row(
            w,
            "CPU ns/record",
            "x",
            (&c_task, &c_thread),
            false,
            "the foreign thread's CPU ns per record",
        ),
    ])
}

/// W2 shape across shards: a task on shard 1 appends to and waits on a log on shard
/// 0 (one message into shard 0's inbox, one wake-up back), against the raw loop on a
/// thread pinned to the task's CPU.
fn w2_across(ctx: &Ctx, cpu: Option<usize>) -> BenchResult<Vec<Row>> {
    let (per_round, rounds) = if ctx.quick { (250, 2) } else { (250, 20) };
    let log = Arc::new(ctx.open_with(|c| c.shard = Some(0))?);
    let f = ctx.baseline_file("t1-w2-across", 64 << 20)?;
    let block = AlignedBlock::new(4096);
    for _ in 0..1000 {
        let r = log.append_record(&[0x42u8; 4096])?;
        log.flush_until(r)?;
    }
    // One histogram per slice; the rows merge them into five rounds.
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let mut off = 0u64;
    let mut run_task = || -> BenchResult<()> {
        ours.push(task_w2_slice(ctx, 1, &log, per_round)?);
        Ok(())
    };
    let mut run_raw = || -> BenchResult<()> {
        let mut h = hist();
        on_cpu(cpu, || {
            raw_4k_syncs(&f, &block, per_round, &mut off, &mut h).map_err(|e| e.to_string())
        })?;
        raw.push(h);
        Ok(())
    };
    rotate(rounds, &mut [&mut run_task, &mut run_raw])?;
    let w = "T1 W2 task on shard 1, log on shard 0";
    let desc = "pwrite 4 KiB + fdatasync, thread pinned to the task's CPU";
    Ok(LatencyRounds::of_slices(&ours, &raw, 5).rows(w, &P50_P99_P999, desc))
}

/// Ready on its second poll: lets the shard run its turn (and other tasks) once.
struct YieldNow(bool);

impl Future for YieldNow {
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

/// What a read that page-faults costs a shard: a task on shard 0 reads records of
/// sealed segments through `read_record` (memory-mapped) whose pages are not in the
/// page cache; the shard's thread is stalled for the whole fault, and every log and
/// task of the shard with it. Against the same reads once the pages are cached. One
/// pass each, without rounds: once read, the pages stay mapped and cannot be made cold
/// again while the log is open.
fn cold_reads(ctx: &Ctx, shard: usize) -> BenchResult<Vec<Row>> {
    let n_records: usize = if ctx.quick { 2048 } else { 8192 };
    let log = Arc::new(ctx.open_with(|c| c.shard = Some(shard))?);
    let payload = vec![0x6bu8; 4096];
    let mut rids = Vec::with_capacity(n_records);
    for _ in 0..n_records {
        rids.push(log.append_record(&payload)?);
    }
    log.flush()?;
    log.seal_active()?;
    // Cold: nothing of the segments in the page cache (nothing mapped them yet).
    let seg_dir = log.root_dir().join("segments");
    for e in std::fs::read_dir(&seg_dir)? {
        drop_cache(&e?.path())?;
    }
    // Every 7th record: each read touches pages no earlier read faulted in.
    let picks: Vec<_> = rids.iter().step_by(7).copied().collect();
    let l = log.clone();
    let (cold, warm) = ctx
        .manager
        .spawn_on_shard(shard, move || async move {
            let (mut cold, mut warm) = (hist(), hist());
            for pass in 0..2 {
                for rid in &picks {
                    let t = Instant::now();
                    let seg = bop_rs::aof2::SegmentId::new(rid.segment_index() as u64);
                    let r = l.open_reader(seg)?;
                    std::hint::black_box(r.read_record(*rid)?.payload().len());
                    let ns = t.elapsed().as_nanos() as u64;
                    let h = if pass == 0 { &mut cold } else { &mut warm };
                    h.record(ns).expect("in bounds");
                }
            }
            Ok::<_, bop_rs::aof2::AofError>((cold, warm))
        })?
        .join()??;
    let w = "T1 a task's cold read_record stalls its shard";
    let desc = "the same reads with the pages cached";
    Ok([("p50", 0.5), ("p99", 0.99)]
        .into_iter()
        .map(|(m, q)| latency_row(w, m, q, (&cold, &warm), desc))
        .collect())
}
