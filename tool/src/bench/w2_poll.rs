//! W2P: W2 (4 KiB append + `flush_until`) with `completion_poll_us` off and on, from a
//! writer on CPU 0, on CPU 1 and unpinned, against the raw loop on the same thread:
//! latency and the process's CPU time per commit (every thread: writer and shards).

use super::baseline::*;
use super::report::*;
use super::{rotate, BenchResult, Ctx};
use bop_rs::aof2::Aof;
use hdrhistogram::Histogram;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// The poll time the rows measure: longer than this disk's 4 KiB commit (~100-200 us;
/// ../shared/MACHINE.md), so most waits end while polling.
pub const POLL_US: u32 = 300;

/// CPU time of the whole process (user + system), every thread.
fn process_cpu() -> Duration {
    // SAFETY: a plain query into a zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One contender's rounds: a latency histogram and the CPU per commit (us) of each.
struct Side {
    hists: Vec<Histogram<u64>>,
    cpu_us: Vec<f64>,
}

impl Side {
    fn new() -> Side {
        Side {
            hists: Vec::new(),
            cpu_us: Vec::new(),
        }
    }
}

/// `n` durable 4 KiB appends to `aof`, as one round of `side`.
fn commits(aof: &Aof, n: usize, side: &mut Side) -> BenchResult<()> {
    let payload = vec![0x42u8; 4096];
    let mut h = hist();
    let c0 = process_cpu();
    for _ in 0..n {
        let t = Instant::now();
        let r = aof.append_record(&payload)?;
        aof.flush_until(r)?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    side.cpu_us
        .push((process_cpu() - c0).as_secs_f64() * 1e6 / n.max(1) as f64);
    side.hists.push(h);
    Ok(())
}

/// Off, on and raw alternating on this thread; returns (off, on, raw).
fn measure(ctx: &Ctx, polling: &bop_rs::aof2::AofManager) -> BenchResult<[Side; 3]> {
    // The rows are medians over the rounds.
    let (per_round, rounds) = if ctx.quick { (100, 2) } else { (500, 5) };
    let off_log = ctx.open()?;
    let on_log = ctx.open_on(polling, |_| {})?;
    let f = ctx.baseline_file("w2p-baseline", 64 << 20)?;
    let block = AlignedBlock::new(4096);
    // Past a new log's first small files, as W2 does.
    let (mut off, mut on, mut raw) = (Side::new(), Side::new(), Side::new());
    commits(&off_log, 1000, &mut Side::new())?;
    commits(&on_log, 1000, &mut Side::new())?;
    let mut at = 0u64;
    rotate(
        rounds,
        &mut [
            &mut || commits(&off_log, per_round, &mut off),
            &mut || commits(&on_log, per_round, &mut on),
            &mut || {
                let mut h = hist();
                let c0 = process_cpu();
                for _ in 0..per_round {
                    let t = Instant::now();
                    f.file.write_all_at(block.bytes(), at % f.size)?;
                    fdatasync(&f.file)?;
                    h.record(t.elapsed().as_nanos() as u64)?;
                    at += 4096;
                }
                raw.cpu_us
                    .push((process_cpu() - c0).as_secs_f64() * 1e6 / per_round as f64);
                raw.hists.push(h);
                Ok(())
            },
        ],
    )?;
    Ok([off, on, raw])
}

/// W2P: one placement's rows, medians over the rounds.
fn rows(workload: &'static str, [off, on, raw]: &[Side; 3]) -> Vec<Row> {
    let base = "pwrite 4 KiB + fdatasync, same thread";
    let vs_raw = |side: &Side| LatencyRounds {
        ours: side.hists.clone(),
        base: raw.hists.clone(),
    };
    let mut rows = vs_raw(off).rows(workload, &[("p50, polling off", 0.5)], base);
    rows.extend(vs_raw(on).rows(
        workload,
        &[("p50, polling on", 0.5), ("p99, polling on", 0.99)],
        base,
    ));
    let cpu_desc = "the raw loop's CPU per commit (process user + system)";
    for (metric, side) in [("CPU/commit, off", off), ("CPU/commit, on", on)] {
        rows.push(rounds_row(
            workload,
            metric,
            "us",
            (&side.cpu_us, &raw.cpu_us),
            false,
            cpu_desc,
        ));
    }
    rows
}

/// W2P: polling off and on, writer on CPU 0, CPU 1 and unpinned.
pub fn w2_poll(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let polling = ctx.polling_manager(POLL_US)?;
    let cpus = aof2_shards::manager::affinity_cpus();
    let mut out = Vec::new();
    let places: [(Option<usize>, &'static str); 3] = [
        (Some(0), "W2P writer on CPU 0 (poll 300 us)"),
        (Some(1), "W2P writer on CPU 1 (poll 300 us)"),
        (None, "W2P writer unpinned (poll 300 us)"),
    ];
    for (cpu, name) in places {
        if cpu.is_some_and(|c| !cpus.contains(&c)) {
            continue;
        }
        let sides = std::thread::scope(|s| {
            s.spawn(|| {
                if let Some(c) = cpu {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                        return Err(format!("cannot pin the W2P writer to CPU {c}"));
                    }
                }
                measure(ctx, &polling).map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "W2P writer panicked".to_string())?
        })?;
        out.extend(rows(name, &sides));
    }
    Ok(out)
}
