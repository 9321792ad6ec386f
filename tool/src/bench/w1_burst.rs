//! W1B: the appending thread's CPU time per record in a burst of 100-byte records that
//! fits within `max_unflushed_bytes`, on a new log: `append_record` one by one,
//! `append_batch` in batches of 64, and `append_with` (written in place).

use super::baseline::thread_cpu_ns;
use super::report::*;
use super::{rotate, BenchResult, Ctx};
use bop_rs::aof2::Aof;

/// Records per burst: 4096 × 136-byte frames, within a new log's first 1 MiB segment.
const BURST: usize = 4096;
const BATCH: usize = 64;

#[derive(Clone, Copy)]
enum Mode {
    Single,
    Batch,
    With,
}

/// Thread CPU ns per record of one burst in `mode` on a new log (after its first
/// record, which waits for the log's first file).
fn burst(ctx: &Ctx, mode: Mode) -> BenchResult<f64> {
    let aof: Aof = ctx.open()?;
    let payload = [0x5au8; 100];
    aof.append_record(&payload)?;
    let refs: Vec<&[u8]> = vec![&payload[..]; BATCH];
    let c0 = thread_cpu_ns();
    match mode {
        Mode::Single => {
            for _ in 0..BURST {
                aof.append_record(&payload)?;
            }
        }
        Mode::Batch => {
            for _ in 0..BURST / BATCH {
                aof.append_batch(&refs)?;
            }
        }
        Mode::With => {
            for _ in 0..BURST {
                aof.append_with(payload.len(), |b| b.copy_from_slice(&payload))?;
            }
        }
    }
    let ns = (thread_cpu_ns() - c0) as f64 / BURST as f64;
    aof.flush()?;
    Ok(ns)
}

/// W1B: ns of the appending thread per record, medians over interleaved bursts.
pub fn w1_burst(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let per_round = if ctx.quick { 2 } else { 5 };
    let (mut single, mut batch, mut with) = (Vec::new(), Vec::new(), Vec::new());
    let bursts = |mode: Mode, out: &mut Vec<f64>| -> BenchResult<()> {
        for _ in 0..per_round {
            out.push(burst(ctx, mode)?);
        }
        Ok(())
    };
    // The three alternate, so each ratio compares bursts run side by side.
    rotate(
        ctx.rounds(),
        &mut [
            &mut || bursts(Mode::Single, &mut single),
            &mut || bursts(Mode::Batch, &mut batch),
            &mut || bursts(Mode::With, &mut with),
        ],
    )?;
    let (mut rb, mut rw) = (Vec::new(), Vec::new());
    for (i, s) in single.iter().enumerate() {
        rb.push(batch[i] / s);
        rw.push(with[i] / s);
    }
    let s = median(&single);
    let w = "W1B burst of 4096 x 100 B, new log";
    Ok(vec![
        Row {
            unit: "ns",
            ..info_row(
                w,
                "append_record CPU",
                s,
                false,
                "ns of the appending thread per record (CLOCK_THREAD_CPUTIME_ID)",
            )
        },
        Row {
            workload: w,
            metric: "append_batch(64) CPU",
            unit: "ns",
            ours: median(&batch),
            baseline: s,
            higher_is_better: false,
            baseline_desc: "append_record one by one, same run (median of per-burst ratios)",
            median_ratio: Some(median(&rb)),
        },
        Row {
            workload: w,
            metric: "append_with CPU",
            unit: "ns",
            ours: median(&with),
            baseline: s,
            higher_is_better: false,
            baseline_desc: "append_record one by one, same run (median of per-burst ratios)",
            median_ratio: Some(median(&rw)),
        },
    ])
}
