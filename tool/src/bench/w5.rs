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
    // Records/s per round, each side: the row is the medians over rounds.
    let (mut r_ours, mut r_base) = (Vec::new(), Vec::new());
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
            let n = run_threads(slice, move |i, _| {
                let payload = [0x55u8; 4096];
                let r = logs[i].append_record(&payload).map_err(|e| e.to_string())?;
                logs[i].flush_until(r).map_err(|e| e.to_string())
            })?;
            r_ours.push(n as f64 / start.elapsed().as_secs_f64());
            Ok(())
        },
        || {
            let files = files.clone();
            let start = Instant::now();
            let n = run_threads(slice, move |i, n| {
                let f = &files[i];
                let block = AlignedBlock::new(4096);
                f.file
                    .write_all_at(block.bytes(), (n * 4096) % f.size)
                    .map_err(|e| e.to_string())?;
                fdatasync(&f.file).map_err(|e| e.to_string())
            })?;
            r_base.push(n as f64 / start.elapsed().as_secs_f64());
            Ok(())
        },
    )?;
    Ok(vec![rounds_row(
        "W5 16 logs, a writer each (4 KiB + flush)",
        "durable records/s",
        "rec/s",
        (&r_ours, &r_base),
        true,
        "16 threads: pwrite 4 KiB + fdatasync, a pre-written file each",
    )])
}
