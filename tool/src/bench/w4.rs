//! W4: durable bandwidth, 16 x 64 KiB records per `flush_until`: in fresh,
//! zero-written segment files, and in steady state (a log under `Size` retention whose
//! segments start in recycled files).

use super::baseline::*;
use super::report::*;
use super::{rotate, BenchResult, Ctx};
use aof2_shards::format;
use bop_rs::aof2::config::RetentionPolicy;
use bop_rs::aof2::Aof;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const RECORD: usize = 64 * 1024;

/// Appends 1 MiB (16 records) per `flush_until` until `bytes` are durable; with
/// `in_place`, through `append_with`, its closure writing each payload straight into
/// the log's buffer (as a serializer would; here a fill with the payload's byte).
fn write_mib_rounds(aof: &Aof, payload: &[u8], bytes: u64, in_place: bool) -> BenchResult<()> {
    let mut written = 0;
    while written < bytes {
        let mut last = None;
        for _ in 0..16 {
            last = Some(if in_place {
                aof.append_with(payload.len(), |b| b.fill(payload[0]))?
            } else {
                aof.append_record(payload)?
            });
        }
        aof.flush_until(last.expect("16 appends"))?;
        written += 16 * payload.len() as u64;
    }
    Ok(())
}

/// GB/s of `bytes` in `t`.
fn gbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

/// W4: 1 MiB of records (16 x 64 KiB) per flush_until, fresh and recycled segments.
pub fn w4(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let total: u64 = if ctx.quick { 64 << 20 } else { 1 << 30 };
    let per_round = total / ctx.rounds() as u64;
    let payload = vec![0x77u8; RECORD];
    let fresh = ctx.open()?;
    // Steady state: 64 MiB segments, retention keeps 256 MiB; released files come back
    // as the next segments (2 spares by default), so after the warm-up (512 MiB; 64 MiB
    // in a quick run) no file is zero-written.
    let steady = ctx.open_with(|c| {
        c.segment_min_bytes = 64 << 20;
        c.segment_target_bytes = 64 << 20;
        c.retention = RetentionPolicy::Size {
            max_total_bytes: 256 << 20,
        }
    })?;
    let warm_bytes: u64 = if ctx.quick { 64 << 20 } else { 512 << 20 };
    write_mib_rounds(&steady, &payload, warm_bytes, false)?;
    let warm = Instant::now();
    while steady.flush_metrics().segments_recycled < 2 && warm.elapsed() < Duration::from_secs(60) {
        write_mib_rounds(&steady, &payload, 64 << 20, false)?;
    }
    let recycled_before = steady.flush_metrics().segments_recycled;
    let prepared_before = steady.flush_metrics().segments_prepared;
    let f = ctx.baseline_file("w4-baseline", 256 << 20)?;
    let block = AlignedBlock::new(1 << 20);
    // Per round, each contender's GB/s: every row's ratio is the median over rounds.
    let (mut fresh_r, mut steady_r, mut with_r, mut base_r, mut copy_r) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut b_base = 0u64;
    let timed = |out: &mut Vec<f64>, f: &mut dyn FnMut() -> BenchResult<()>| {
        let start = Instant::now();
        f()?;
        out.push(gbps(per_round, start.elapsed()));
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let mut run_fresh = || {
        timed(&mut fresh_r, &mut || {
            write_mib_rounds(&fresh, &payload, per_round, false)
        })
    };
    let mut run_steady = || {
        timed(&mut steady_r, &mut || {
            write_mib_rounds(&steady, &payload, per_round, false)
        })
    };
    let mut run_with = || {
        timed(&mut with_r, &mut || {
            write_mib_rounds(&steady, &payload, per_round, true)
        })
    };
    let mut run_base = || {
        timed(&mut base_r, &mut || {
            let mut written = 0;
            while written < per_round {
                f.file.write_all_at(block.bytes(), b_base % f.size)?;
                fdatasync(&f.file)?;
                written += 1 << 20;
                b_base += 1 << 20;
            }
            Ok(())
        })
    };
    // The raw loop as an engine must run it: each MiB copied from the records into the
    // write buffer and checksummed (the log's frame checksum, per 64 KiB record) before
    // its write. The gap to the static-buffer loop is the copy, the checksum and the
    // disk's slower writes of freshly written memory; no copying engine passes it.
    let records_mib = payload.repeat(16);
    let mut copy_block = AlignedBlock::new(1 << 20);
    let mut b_copy = 0u64;
    let mut run_copy_base = || {
        timed(&mut copy_r, &mut || {
            let mut written = 0;
            while written < per_round {
                let mib = copy_block.copy_in(&records_mib);
                for r in mib.chunks(RECORD) {
                    std::hint::black_box(format::frame_crc_of(0, r));
                }
                f.file.write_all_at(mib, b_copy % f.size)?;
                fdatasync(&f.file)?;
                written += 1 << 20;
                b_copy += 1 << 20;
            }
            Ok(())
        })
    };
    rotate(
        ctx.rounds(),
        &mut [
            &mut run_fresh,
            &mut run_steady,
            &mut run_with,
            &mut run_base,
            &mut run_copy_base,
        ],
    )?;
    let m = steady.flush_metrics();
    let recycled = m.segments_recycled - recycled_before;
    let prepared = m.segments_prepared - prepared_before;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let baseline = mean(&base_r);
    let baseline_desc = if f.direct {
        "1 MiB O_DIRECT pwrite + fdatasync, pre-written file"
    } else {
        "1 MiB pwrite (buffered: no O_DIRECT here) + fdatasync, pre-written file"
    };
    if recycled < prepared {
        log::warn!("W4 steady state: only {recycled} of {prepared} new segments were recycled");
    }
    // A bandwidth row: the mean GB/s of `runs`, its ratio the median per round.
    let gbps_row = |workload, runs: &[f64]| Row {
        workload,
        metric: "GB/s",
        unit: "GB/s",
        ours: mean(runs),
        baseline,
        higher_is_better: true,
        baseline_desc,
        median_ratio: Some(median_ratio(runs, &base_r)),
    };
    Ok(vec![
        gbps_row(
            "W4 durable bandwidth (1 MiB per flush_until), fresh segment files",
            &fresh_r,
        ),
        gbps_row(
            "W4 steady state: 64 MiB segments, recycled (Size 256 MiB)",
            &steady_r,
        ),
        gbps_row("W4 steady state through append_with (in place)", &with_r),
        Row {
            workload: "W4 steady state, against a copying raw loop",
            metric: "GB/s",
            unit: "GB/s",
            ours: mean(&steady_r),
            baseline: mean(&copy_r),
            higher_is_better: true,
            baseline_desc:
                "the same raw loop, each MiB first copied from the records and checksummed",
            median_ratio: Some(median_ratio(&steady_r, &copy_r)),
        },
        Row {
            workload: "W4 steady state",
            metric: "segments recycled / prepared",
            unit: "",
            ours: recycled as f64,
            baseline: prepared as f64,
            higher_is_better: true,
            baseline_desc: "new segment files prepared (recycled or zero-written)",
            median_ratio: None,
        },
    ])
}
