//! W5: many logs, a writer thread each appending 4 KiB and waiting for durability.

use super::baseline::*;
use super::report::*;
use super::{alternate, BenchResult, Ctx};
use bop_rs::aof2::Aof;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// W5: 16 logs, one writer thread each, every append (4 KiB) waited for with
/// `flush_until`: the shards carry many logs' syncs at once.
pub fn w5(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    const LOGS: usize = 16;
    let slice = ctx.duration() / ctx.rounds() as u32;
    let logs: Vec<Arc<Aof>> = (0..LOGS)
        .map(|_| ctx.open().map(Arc::new))
        .collect::<BenchResult<_>>()?;
    let files: Vec<Arc<PrewrittenFile>> = (0..LOGS)
        .map(|i| {
            ctx.baseline_file(&format!("w5-baseline-{i}"), 16 << 20)
                .map(Arc::new)
        })
        .collect::<BenchResult<_>>()?;
    let (mut n_ours, mut t_ours, mut n_base, mut t_base) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    // Runs `op` on one thread per index until `slice` is over; returns the operations.
    fn run_threads(
        slice: Duration,
        op: impl Fn(usize, u64) -> Result<(), String> + Send + Sync + Clone + 'static,
    ) -> BenchResult<u64> {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..LOGS)
            .map(|i| {
                let (stop, op) = (stop.clone(), op.clone());
                std::thread::spawn(move || -> Result<u64, String> {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        op(i, n)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for t in threads {
            total += t.join().map_err(|_| "W5 thread panicked")??;
        }
        Ok(total)
    }
    alternate(
        ctx.rounds(),
        || {
            let logs = logs.clone();
            let start = Instant::now();
            n_ours += run_threads(slice, move |i, _| {
                let payload = [0x55u8; 4096];
                let r = logs[i].append_record(&payload).map_err(|e| e.to_string())?;
                logs[i].flush_until(r).map_err(|e| e.to_string())
            })?;
            t_ours += start.elapsed();
            Ok(())
        },
        || {
            let files = files.clone();
            let start = Instant::now();
            n_base += run_threads(slice, move |i, n| {
                let f = &files[i];
                let block = AlignedBlock::new(4096);
                f.file
                    .write_all_at(block.bytes(), (n * 4096) % f.size)
                    .map_err(|e| e.to_string())?;
                fdatasync(&f.file).map_err(|e| e.to_string())
            })?;
            t_base += start.elapsed();
            Ok(())
        },
    )?;
    Ok(vec![Row {
        workload: "W5 16 logs, a writer each (4 KiB + flush)",
        metric: "durable records/s",
        unit: "rec/s",
        ours: n_ours as f64 / t_ours.as_secs_f64(),
        baseline: n_base as f64 / t_base.as_secs_f64(),
        higher_is_better: true,
        baseline_desc: "16 threads: pwrite 4 KiB + fdatasync, a pre-written file each",
        median_ratio: None,
    }])
}
