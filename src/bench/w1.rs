//! W1: buffered appends, 100-byte records from one thread, no flush waits.

use super::report::*;
use super::{alternate, BenchResult, Ctx};
use std::time::{Duration, Instant};

const W1_FRAME: usize = aof2_shards::format::frame_size(100);

/// W1: 100-byte records from one thread for a fixed time, no flush waits.
pub fn w1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let payload = [0x5au8; 100];
    let slice = ctx.duration() / ctx.rounds() as u32;
    let aof = ctx.open()?;
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
    alternate(
        ctx.rounds(),
        || {
            let start = Instant::now();
            while start.elapsed() < slice {
                for _ in 0..1024 {
                    aof.append_record(&payload)?;
                }
                n += 1024;
            }
            t_ours += start.elapsed();
            Ok(())
        },
        || {
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
        },
    )?;
    Ok(vec![Row {
        workload: "W1 buffered appends (100 B, 1 thread)",
        metric: "records/s",
        unit: "rec/s",
        ours: n as f64 / t_ours.as_secs_f64(),
        baseline: m as f64 / t_base.as_secs_f64(),
        higher_is_better: true,
        baseline_desc: "memcpy of the same frames into a buffer",
        median_ratio: None,
    }])
}
