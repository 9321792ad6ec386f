//! W4: durable bandwidth, 16 x 64 KiB records per `flush_until`.

use super::baseline::*;
use super::report::*;
use super::{alternate, BenchResult, Ctx};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// W4: 1 MiB of records (16 x 64 KiB) per flush_until.
pub fn w4(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let total: u64 = if ctx.quick { 64 << 20 } else { 1 << 30 };
    let per_round = total / ctx.rounds() as u64;
    let payload = vec![0x77u8; 64 * 1024];
    let aof = ctx.open()?;
    let f = ctx.baseline_file("w4-baseline", 256 << 20)?;
    let block = AlignedBlock::new(1 << 20);
    let (mut b_ours, mut t_ours, mut b_base, mut t_base) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    alternate(
        ctx.rounds(),
        || {
            let start = Instant::now();
            let mut written = 0;
            while written < per_round {
                let mut last = None;
                for _ in 0..16 {
                    last = Some(aof.append_record(&payload)?);
                }
                aof.flush_until(last.expect("16 appends"))?;
                written += 16 * payload.len() as u64;
            }
            b_ours += written;
            t_ours += start.elapsed();
            Ok(())
        },
        || {
            let start = Instant::now();
            let mut written = 0;
            while written < per_round {
                f.file.write_all_at(block.bytes(), b_base % f.size)?;
                fdatasync(&f.file)?;
                written += 1 << 20;
                b_base += 1 << 20;
            }
            t_base += start.elapsed();
            Ok(())
        },
    )?;
    Ok(vec![Row {
        workload: "W4 durable bandwidth (1 MiB per flush_until)",
        metric: "GB/s",
        unit: "GB/s",
        ours: b_ours as f64 / t_ours.as_secs_f64() / 1e9,
        baseline: b_base as f64 / t_base.as_secs_f64() / 1e9,
        higher_is_better: true,
        baseline_desc: if f.direct {
            "1 MiB O_DIRECT pwrite + fdatasync, pre-written file"
        } else {
            "1 MiB pwrite (buffered: no O_DIRECT here) + fdatasync, pre-written file"
        },
        median_ratio: None,
    }])
}
