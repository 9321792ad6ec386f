//! W1: buffered appends, 100-byte records from one thread, no flush waits.

use super::report::*;
use super::{rotate, BenchResult, Ctx};
use bop_rs::aof2::config::RetentionPolicy;
use bop_rs::aof2::Aof;
use std::time::{Duration, Instant};

/// Appends 100-byte records for `slice`; returns how many.
fn append_for(aof: &Aof, payload: &[u8], slice: Duration) -> BenchResult<u64> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < slice {
        for _ in 0..1024 {
            aof.append_record(payload)?;
        }
        n += 1024;
    }
    Ok(n)
}

const W1_FRAME: usize = aof2_shards::format::frame_size(100);

/// W1: 100-byte records from one thread for a fixed time, no flush waits.
pub fn w1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let payload = [0x5au8; 100];
    let slice = ctx.duration() / ctx.rounds() as u32;
    let aof = ctx.open()?;
    // The same on a log whose retention releases segments as it writes.
    let retained = ctx.open_with(|c| {
        c.retention = RetentionPolicy::Size {
            max_total_bytes: 64 << 20,
        }
    })?;
    let (frame, _) = aof2_shards::format::encode_frame(
        1,
        1,
        aof2_shards::format::FrameKind::Record,
        64,
        0,
        &payload,
    );
    let frame: [u8; W1_FRAME] = frame.try_into().expect("frame size");
    let mut buf = vec![0u8; aof2_shards::log::BUF_SIZE]; // the size of a log buffer
    let (mut n, mut t_ours, mut m, mut t_base) = (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    let (mut r, mut t_ret) = (0u64, Duration::ZERO);
    let mut ours = || {
        let start = Instant::now();
        n += append_for(&aof, &payload, slice)?;
        t_ours += start.elapsed();
        Ok(())
    };
    let mut with_retention = || {
        let start = Instant::now();
        r += append_for(&retained, &payload, slice)?;
        t_ret += start.elapsed();
        Ok(())
    };
    let mut base = || {
        // The same frames copied into a buffer: no checksum, no lock, no I/O.
        let start = Instant::now();
        let mut off = 0usize;
        while start.elapsed() < slice {
            for _ in 0..1024 {
                if off + W1_FRAME > buf.len() {
                    off = 0;
                }
                buf[off..off + W1_FRAME].copy_from_slice(std::hint::black_box(&frame));
                off += W1_FRAME;
            }
            m += 1024;
        }
        std::hint::black_box(&buf);
        t_base += start.elapsed();
        Ok(())
    };
    rotate(
        ctx.rounds(),
        &mut [&mut ours, &mut with_retention, &mut base],
    )?;
    let released = retained.flush_metrics().segments_released;
    Ok(vec![
        Row {
            workload: "W1 buffered appends (100 B, 1 thread)",
            metric: "records/s",
            unit: "rec/s",
            ours: n as f64 / t_ours.as_secs_f64(),
            baseline: m as f64 / t_base.as_secs_f64(),
            higher_is_better: true,
            baseline_desc: "memcpy of the same frames into a buffer",
            median_ratio: None,
        },
        Row {
            workload: "W1 while Size retention (64 MiB) releases segments",
            metric: "records/s vs W1",
            unit: "rec/s",
            ours: r as f64 / t_ret.as_secs_f64(),
            baseline: n as f64 / t_ours.as_secs_f64(),
            higher_is_better: true,
            baseline_desc: "W1 above, same run (the segments released are counted below)",
            median_ratio: None,
        },
        Row {
            workload: "W1 while Size retention (64 MiB) releases segments",
            metric: "segments released",
            unit: "",
            ours: released as f64,
            baseline: f64::NAN,
            higher_is_better: true,
            baseline_desc: "-",
            median_ratio: None,
        },
    ])
}
