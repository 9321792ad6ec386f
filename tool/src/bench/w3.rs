//! W3: group commit, 64 writers each appending 4 KiB and waiting for durability.

use super::baseline::*;
use super::report::*;
use super::{group_commit, rotate, BenchResult, Ctx};
use hdrhistogram::Histogram;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// W3: 64 concurrent writers each appending 4 KiB and waiting for durability.
pub fn w3(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    const WRITERS: usize = 64;
    let slice = ctx.duration() / ctx.rounds() as u32;
    let aof = Arc::new(ctx.open()?);
    let f = ctx.baseline_file("w3-baseline", 64 << 20)?;
    let g = ctx.baseline_file("w3-buffered", 64 << 20)?;
    let g = g.buffered(&ctx.root.join("w3-buffered"))?;
    let h = ctx.baseline_file("w3-threads", 64 << 20)?;
    let block = AlignedBlock::new(4096);
    // Per round: each side's latencies and records/s (the rows are medians over rounds).
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let (mut r_ours, mut r_base, mut r_buf, mut r_threads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut n_ours = 0u64;
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
        let (mut round, mut n_round) = (hist(), 0);
        for t in threads {
            let (n, h) = t.join().map_err(|_| "writer thread panicked")??;
            n_round += n;
            round.add(h)?;
        }
        r_ours.push(n_round as f64 / start.elapsed().as_secs_f64());
        ours.push(round);
        n_ours += n_round;
        Ok(())
    };
    let mut run_base = || -> BenchResult<()> {
        // 64 separate 4 KiB pwrites, then one fdatasync.
        let (mut round, mut n_base) = (hist(), 0u64);
        let start = Instant::now();
        while start.elapsed() < slice {
            let t = Instant::now();
            for _ in 0..WRITERS {
                f.file.write_all_at(block.bytes(), off % f.size)?;
                off += 4096;
            }
            fdatasync(&f.file)?;
            round.record_n(t.elapsed().as_nanos() as u64, WRITERS as u64)?;
            n_base += WRITERS as u64;
        }
        r_base.push(n_base as f64 / start.elapsed().as_secs_f64());
        base.push(round);
        Ok(())
    };
    // One thread writing 64 buffered 4 KiB records, then one fdatasync: the bound of
    // group commit, with no waiting threads at all.
    let mut run_buffered = || {
        let start = Instant::now();
        let n = buffered_per_sync(&g, &block, WRITERS, &mut goff, slice)?;
        r_buf.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    // 64 threads through a textbook group commit (group_commit.rs): what threads
    // taking turns cost here, with no engine at all.
    let mut run_threads = || {
        r_threads.push(group_commit::run(&h, WRITERS, slice)?);
        Ok(())
    };
    rotate(
        ctx.rounds(),
        &mut [
            &mut run_ours,
            &mut run_base,
            &mut run_buffered,
            &mut run_threads,
        ],
    )?;
    let after = aof.flush_metrics();
    let syncs = (after.syncs - before.syncs).max(1) as f64;
    let desc = "64 separate 4 KiB pwrites + 1 fdatasync";
    let w = "W3 group commit (64 writers x 4 KiB)";
    let info = |metric, v: f64, what| info_row(w, metric, v, false, what);
    let lr = LatencyRounds { ours, base };
    Ok(vec![
        rounds_row(
            w,
            "durable records/s",
            "rec/s",
            (&r_ours, &r_base),
            true,
            desc,
        ),
        rounds_row(
            w,
            "durable records/s",
            "rec/s",
            (&r_ours, &r_buf),
            true,
            "one thread: 64 buffered 4 KiB pwrites + 1 fdatasync",
        ),
        rounds_row(
            w,
            "durable records/s",
            "rec/s",
            (&r_ours, &r_threads),
            true,
            "64 threads, textbook group commit: a leader pwrites + fdatasyncs the queue",
        ),
        lr.rows(w, &[("p99", 0.99)], desc).remove(0),
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
