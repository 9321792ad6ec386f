//! W3: group commit, 64 writers each appending 4 KiB and waiting for durability.

use super::baseline::*;
use super::report::*;
use super::{rotate, BenchResult, Ctx};
use hdrhistogram::Histogram;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// W3: 64 concurrent writers each appending 4 KiB and waiting for durability.
pub fn w3(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    const WRITERS: usize = 64;
    let slice = ctx.duration() / ctx.rounds() as u32;
    let aof = Arc::new(ctx.open()?);
    let f = ctx.baseline_file("w3-baseline", 64 << 20)?;
    let g = ctx.baseline_file("w3-buffered", 64 << 20)?;
    let g = g.buffered(&ctx.root.join("w3-buffered"))?;
    let block = AlignedBlock::new(4096);
    let (mut ours, mut base) = (hist(), hist());
    let (mut n_ours, mut t_ours, mut n_base, mut t_base) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    let (mut n_buf, mut t_buf) = (0u64, Duration::ZERO);
    let (mut off, mut goff) = (0u64, 0u64);
    let before = aof.flush_metrics();
    let mut run_ours = || {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (aof, stop) = (aof.clone(), stop.clone());
                std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                    let payload = vec![0x33u8; 4096];
                    let mut h = hist();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let r = aof.append_record(&payload).map_err(|e| e.to_string())?;
                        aof.flush_until(r).map_err(|e| e.to_string())?;
                        h.record(t.elapsed().as_nanos() as u64)
                            .map_err(|e| e.to_string())?;
                        n += 1;
                    }
                    Ok((n, h))
                })
            })
            .collect();
        let start = Instant::now();
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let (n, h) = t.join().map_err(|_| "writer thread panicked")??;
            n_ours += n;
            ours.add(h)?;
        }
        t_ours += start.elapsed();
        Ok(())
    };
    let mut run_base = || {
        // 64 separate 4 KiB pwrites, then one fdatasync.
        let start = Instant::now();
        while start.elapsed() < slice {
            let t = Instant::now();
            for _ in 0..WRITERS {
                f.file.write_all_at(block.bytes(), off % f.size)?;
                off += 4096;
            }
            fdatasync(&f.file)?;
            base.record_n(t.elapsed().as_nanos() as u64, WRITERS as u64)?;
            n_base += WRITERS as u64;
        }
        t_base += start.elapsed();
        Ok(())
    };
    // One thread writing 64 buffered 4 KiB records, then one fdatasync: the bound of
    // group commit, with no waiting threads at all.
    let mut run_buffered = || {
        let start = Instant::now();
        n_buf += buffered_per_sync(&g, &block, WRITERS, &mut goff, slice)?;
        t_buf += start.elapsed();
        Ok(())
    };
    rotate(
        ctx.rounds(),
        &mut [&mut run_ours, &mut run_base, &mut run_buffered],
    )?;
    let after = aof.flush_metrics();
    let syncs = (after.syncs - before.syncs).max(1) as f64;
    let desc = "64 separate 4 KiB pwrites + 1 fdatasync";
    let w = "W3 group commit (64 writers x 4 KiB)";
    let per_second = n_ours as f64 / t_ours.as_secs_f64();
    let info = |metric, v: f64, what| info_row(w, metric, v, false, what);
    Ok(vec![
        Row {
            workload: w,
            metric: "durable records/s",
            unit: "rec/s",
            ours: per_second,
            baseline: n_base as f64 / t_base.as_secs_f64(),
            higher_is_better: true,
            baseline_desc: desc,
            median_ratio: None,
        },
        Row {
            workload: w,
            metric: "durable records/s",
            unit: "rec/s",
            ours: per_second,
            baseline: n_buf as f64 / t_buf.as_secs_f64(),
            higher_is_better: true,
            baseline_desc: "one thread: 64 buffered 4 KiB pwrites + 1 fdatasync",
            median_ratio: None,
        },
        latency_row(w, "p99", 0.99, (&ours, &base), desc),
        info(
            "records per sync",
            n_ours as f64 / syncs,
            "(how many records each sync covered)",
        ),
        info(
            "idle wake-ups/sync",
            (after.spurious_wakeups - before.spurious_wakeups) as f64 / syncs,
            "(waiter wake-ups that found nothing to do, per sync)",
        ),
    ])
}
