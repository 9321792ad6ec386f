//! P1: this engine against the peer a user would pick, okaywal 0.3 (a leader/follower
//! write-ahead log whose first waiting thread writes and syncs itself), each through
//! its own durable call, on the same directory, alternating in slices: one writer
//! (append + sync latency), two writers and 64 writers (durable records/s).
//!
//! okaywal is compiled only with `--features peers` (the README's benchmark command),
//! so the library embedders get never depends on it.

use super::report::*;
use super::{rotate, BenchResult, Ctx};
use bop_rs::aof2::Aof;
use hdrhistogram::Histogram;
use okaywal::{Entry, EntryId, LogManager, SegmentReader, WriteAheadLog};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An okaywal log that keeps nothing at recovery and checkpoints nothing.
#[derive(Debug)]
struct Discard;

impl LogManager for Discard {
    fn recover(&mut self, _: &mut Entry<'_>) -> std::io::Result<()> {
        Ok(())
    }
    fn checkpoint_to(
        &mut self,
        _: EntryId,
        _: &mut SegmentReader,
        _: &WriteAheadLog,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// okaywal opened in `dir`.
pub struct Okaywal(WriteAheadLog);

impl Okaywal {
    /// Opens (creates) an okaywal log in `dir`.
    pub fn open(dir: &Path) -> BenchResult<Okaywal> {
        Ok(Okaywal(WriteAheadLog::recover(dir, Discard)?))
    }

    /// Appends `payload` as one entry and commits it (durable when this returns).
    pub fn append_sync(&self, payload: &[u8]) -> BenchResult<()> {
        let mut w = self.0.begin_entry()?;
        w.write_chunk(payload)?;
        w.commit()?;
        Ok(())
    }
}

/// `threads` threads appending 4 KiB records durably for `slice`; records done.
fn threads_for(
    threads: usize,
    slice: Duration,
    one: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> BenchResult<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, one) = (stop.clone(), one.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    one()?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(slice);
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    for h in hs {
        n += h.join().map_err(|_| "a writer panicked")??;
    }
    Ok(n)
}

/// P1: aof2 against okaywal, one, two and 64 writers.
pub fn p1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let aof = Arc::new(ctx.open()?);
    let wal = Arc::new(Okaywal::open(&ctx.root.join("okaywal"))?);
    let payload = Arc::new(vec![0x6bu8; 4096]);
    // Warm both up (segment files, caches).
    for _ in 0..100 {
        let r = aof.append_record(&payload)?;
        aof.flush_until(r)?;
        wal.append_sync(&payload)?;
    }
    let per_round = if ctx.quick { 300 } else { 2000 };
    let (mut ours, mut theirs) = (hist(), hist());
    {
        let sample = |h: &mut Histogram<u64>, f: &dyn Fn() -> BenchResult<()>| {
            for _ in 0..per_round {
                let t = Instant::now();
                f()?;
                h.record(t.elapsed().as_nanos() as u64)?;
            }
            BenchResult::Ok(())
        };
        let a = |aof: &Aof| -> BenchResult<()> {
            let r = aof.append_record(&payload)?;
            aof.flush_until(r)?;
            Ok(())
        };
        let mut run_ours = || sample(&mut ours, &|| a(&aof));
        let mut run_theirs = || sample(&mut theirs, &|| wal.append_sync(&payload));
        rotate(ctx.rounds(), &mut [&mut run_ours, &mut run_theirs])?;
    }
    let w1 = "P1 one writer, 4 KiB append + sync";
    let t = "P1: one writer, 4 KiB append + durable wait, against okaywal 0.3";
    super::plots::record_curve("latency_p1", t, "aof2", &ours);
    super::plots::record_curve("latency_p1", t, "okaywal 0.3", &theirs);
    let desc = "okaywal 0.3: 4 KiB entry + commit";
    let mut rows = vec![
        latency_row(w1, "p50", 0.5, (&ours, &theirs), desc),
        latency_row(w1, "p99", 0.99, (&ours, &theirs), desc),
        latency_row(w1, "p99.9", 0.999, (&ours, &theirs), desc),
    ];
    let slice = ctx.duration() / ctx.rounds() as u32;
    for (threads, name) in [
        (2, "P1 two writers, 4 KiB append + sync each"),
        (64, "P1 64 writers, 4 KiB append + sync each"),
    ] {
        let (mut n_ours, mut n_theirs) = (0u64, 0u64);
        let (mut t_ours, mut t_theirs) = (Duration::ZERO, Duration::ZERO);
        let ours_one: Arc<dyn Fn() -> Result<(), String> + Send + Sync> = {
            let (aof, payload) = (aof.clone(), payload.clone());
            Arc::new(move || {
                let r = aof.append_record(&payload).map_err(|e| e.to_string())?;
                aof.flush_until(r).map_err(|e| e.to_string())
            })
        };
        let theirs_one: Arc<dyn Fn() -> Result<(), String> + Send + Sync> = {
            let (wal, payload) = (wal.clone(), payload.clone());
            Arc::new(move || wal.append_sync(&payload).map_err(|e| e.to_string()))
        };
        let mut run_ours = || {
            let t = Instant::now();
            n_ours += threads_for(threads, slice, ours_one.clone())?;
            t_ours += t.elapsed();
            Ok(())
        };
        let mut run_theirs = || {
            let t = Instant::now();
            n_theirs += threads_for(threads, slice, theirs_one.clone())?;
            t_theirs += t.elapsed();
            Ok(())
        };
        rotate(ctx.rounds(), &mut [&mut run_ours, &mut run_theirs])?;
        rows.push(Row {
            workload: name,
            metric: "durable records/s",
            unit: "rec/s",
            ours: n_ours as f64 / t_ours.as_secs_f64(),
            baseline: n_theirs as f64 / t_theirs.as_secs_f64(),
            higher_is_better: true,
            baseline_desc: "okaywal 0.3, the same threads: entry + commit each",
            median_ratio: None,
        });
    }
    Ok(rows)
}
