//! W2: durable latency, one writer appending 4 KiB and waiting for `flush_until`.

use super::baseline::*;
use super::report::*;
use super::{alternate, BenchResult, Ctx};
use hdrhistogram::Histogram;
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// W2: one writer, 4 KiB record then flush_until; once from an unpinned thread, once
/// from a thread pinned to the CPU of the log's shard (the deployment the shards are
/// built for). The baseline runs on the same thread each time.
pub fn w2(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let mut rows = w2_new(ctx)?;
    rows.extend(w2_on(ctx, None)?);
    let aof = ctx.open()?;
    if let Some(cpu) = aof.shard_cpu() {
        drop(aof);
        let pinned = std::thread::scope(|s| {
            s.spawn(|| {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    return Err("cannot pin the W2 writer".to_string());
                }
                w2_on(ctx, Some(cpu)).map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "W2 writer panicked".to_string())?
        })?;
        rows.extend(pinned);
    }
    Ok(rows)
}

fn w2_on(ctx: &Ctx, pinned: Option<usize>) -> BenchResult<Vec<Row>> {
    // Five rounds (two in a quick run) of eight slices of 250 appends a side: the disk's
    // slow spells (tens of ms) hit both sides alike, and the rows take medians over the
    // rounds.
    let (rounds, slices_per_round) = if ctx.quick { (2, 2) } else { (5, 8) };
    let aof = ctx.open()?;
    if pinned.is_some() && aof.shard_cpu() != pinned {
        return Err("the W2 log landed on another shard than expected".into());
    }
    let f = ctx.baseline_file("w2-baseline", 64 << 20)?;
    // Warm-up: 1,000 records (4 MiB), past a new log's first small segments (its
    // first 1 MiB files, prepared while it shows it is busy), so what is measured is a
    // busy log's steady state.
    warm_up(&aof, &f, 1000)?;
    let mut lr = LatencyRounds::new();
    let mut off = 0;
    for _ in 0..rounds {
        let (ours, base) = slices(&aof, &f, slices_per_round, 250, &mut off)?;
        lr.push(ours, base);
    }
    if pinned.is_none() {
        let t = "W2: one writer, 4 KiB append + flush_until (after 4 MiB)";
        let (ours, base) = lr.pooled();
        super::plots::record_curve("latency_w2", t, "aof2", &ours);
        super::plots::record_curve("latency_w2", t, "pwrite 4 KiB + fdatasync", &base);
    }
    let workload = if pinned.is_some() {
        "W2 same, writer pinned to the shard's CPU"
    } else {
        "W2 durable latency (4 KiB + flush_until)"
    };
    Ok(lr.rows(
        workload,
        &P50_P99_P999,
        "pwrite 4 KiB + fdatasync, pre-written file (medians over rounds)",
    ))
}

/// W2 on a new log: 200 warm-up records, then its first 64 MiB (16,384 durable 4 KiB
/// appends), alternating in slices with the raw loop. What a service sees in its first
/// minutes: the log's first files are still being created (zero-written) meanwhile.
/// Five new logs (two in a quick run), each a round: each quantile is taken over a
/// log's first 64 MiB, and the rows are the medians over the logs.
fn w2_new(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let (logs, total): (usize, usize) = if ctx.quick { (2, 1024) } else { (5, 16_384) };
    // Slices of 256 appends: the disk's slow spells (tens of ms) hit both sides alike.
    let per_slice = 256;
    let mut lr = LatencyRounds::new();
    let (mut first_ours, mut first_base) = (Vec::new(), Vec::new());
    let (mut pre_ours, mut pre_base) = (Vec::new(), Vec::new());
    for i in 0..logs {
        // Its first record: open, append, flush_until, against the raw minimum for a
        // durable first record in a new place (alternating who goes first).
        let mut log_first = || -> BenchResult<bop_rs::aof2::Aof> {
            let t = Instant::now();
            let aof = ctx.open()?;
            let r = aof.append_record(&[0x42u8; 4096])?;
            aof.flush_until(r)?;
            first_ours.push(t.elapsed().as_secs_f64() * 1e6);
            Ok(aof)
        };
        let aof = if i % 2 == 0 {
            let aof = log_first()?;
            first_base.push(raw_first_record(&ctx.root.join(format!("w2-first-{i}")))?);
            aof
        } else {
            first_base.push(raw_first_record(&ctx.root.join(format!("w2-first-{i}")))?);
            log_first()?
        };
        // With `preallocate_segments`, appended 10 ms after the open (a service opens its
        // log at start-up and writes later): against one raw pwrite + fdatasync.
        {
            let pre = ctx.open_with(|c| c.preallocate_segments = true)?;
            std::thread::sleep(std::time::Duration::from_millis(10));
            let t = Instant::now();
            let r = pre.append_record(&[0x42u8; 4096])?;
            pre.flush_until(r)?;
            pre_ours.push(t.elapsed().as_secs_f64() * 1e6);
            pre.close()?;
            let f = ctx.baseline_file("w2-pre-baseline", 1 << 20)?;
            let block = AlignedBlock::new(4096);
            let t = Instant::now();
            f.file.write_all_at(block.bytes(), 0)?;
            fdatasync(&f.file)?;
            pre_base.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let f = ctx.baseline_file("w2-new-baseline", 64 << 20)?;
        warm_up(&aof, &f, 200)?;
        let mut off = 200 * 4096;
        let (ours, base) = slices(&aof, &f, total / per_slice, per_slice, &mut off)?;
        lr.push(ours, base);
        aof.close()?;
        drop((aof, f));
        ctx.tidy()?;
    }
    let mut rows = vec![rounds_row(
        "W2 a new log's first record: open + append + flush_until",
        "time",
        "us",
        (&first_ours, &first_base),
        false,
        "mkdir, create, 4 KiB O_DIRECT pwrite + fdatasync, fsync both directories",
    )];
    rows.push(rounds_row(
        "W2 the same, preallocate_segments, 10 ms after open: append + flush_until",
        "time",
        "us",
        (&pre_ours, &pre_base),
        false,
        "4 KiB O_DIRECT pwrite + fdatasync, pre-written file",
    ));
    rows.extend(lr.rows(
        "W2 a new log's first 64 MiB (after 200 records)",
        &P50_P99_P999,
        "pwrite 4 KiB + fdatasync, pre-written file (medians over new logs)",
    ));
    Ok(rows)
}

/// The raw minimum for a durable first record in a new place: a new directory `dir`,
/// a new file in it, one 4 KiB O_DIRECT write and `fdatasync`, and the directory and
/// its parent fsynced (so both entries survive a crash). Microseconds.
fn raw_first_record(dir: &std::path::Path) -> BenchResult<f64> {
    use std::os::unix::fs::OpenOptionsExt;
    let block = AlignedBlock::new(4096);
    let t = Instant::now();
    std::fs::create_dir(dir)?;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    let path = dir.join("first");
    let file = match o.clone().custom_flags(libc::O_DIRECT).open(&path) {
        Ok(f) => f,
        Err(_) => o.open(&path)?,
    };
    file.write_all_at(block.bytes(), 0)?;
    fdatasync(&file)?;
    for d in [dir, dir.parent().ok_or("the directory has a parent")?] {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

/// Alternates `slices` slices of `per_slice` durable 4 KiB appends to `aof` with as
/// many raw `pwrite` + `fdatasync` of 4 KiB into `f` (from offset `off`, advanced);
/// returns the latency histograms of both.
fn slices(
    aof: &bop_rs::aof2::Aof,
    f: &PrewrittenFile,
    slices: usize,
    per_slice: usize,
    off: &mut u64,
) -> BenchResult<(Histogram<u64>, Histogram<u64>)> {
    let payload = vec![0x42u8; 4096];
    let block = AlignedBlock::new(4096);
    let (mut ours, mut base) = (hist(), hist());
    alternate(
        slices,
        || {
            for _ in 0..per_slice {
                let t = Instant::now();
                let r = aof.append_record(&payload)?;
                aof.flush_until(r)?;
                ours.record(t.elapsed().as_nanos() as u64)?;
            }
            Ok(())
        },
        || {
            for _ in 0..per_slice {
                let t = Instant::now();
                f.file.write_all_at(block.bytes(), *off % f.size)?;
                fdatasync(&f.file)?;
                base.record(t.elapsed().as_nanos() as u64)?;
                *off += 4096;
            }
            Ok(())
        },
    )?;
    Ok((ours, base))
}

/// Appends `n` durable 4 KiB records to `aof` and writes as many raw blocks into `f`.
fn warm_up(aof: &bop_rs::aof2::Aof, f: &PrewrittenFile, n: u64) -> BenchResult<()> {
    let payload = vec![0x42u8; 4096];
    let block = AlignedBlock::new(4096);
    for i in 0..n {
        let r = aof.append_record(&payload)?;
        aof.flush_until(r)?;
        f.file.write_all_at(block.bytes(), i * 4096)?;
        fdatasync(&f.file)?;
    }
    Ok(())
}
