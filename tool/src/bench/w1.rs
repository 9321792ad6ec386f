//! W1: buffered appends, 100-byte records from one thread, no flush waits.

use super::report::*;
use super::{rotate, BenchResult, Ctx};
use bop_rs::aof2::config::RetentionPolicy;
use bop_rs::aof2::Aof;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Appends 100-byte records for `slice`; returns how many.
pub(super) fn append_for(aof: &Aof, payload: &[u8], slice: Duration) -> BenchResult<u64> {
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
                                                         // The disk's write bandwidth: 1 MiB O_DIRECT writes (no sync: the appends do not
                                                         // wait for durability either) over a pre-written file, wrapping.
    let raw = ctx.baseline_file("w1-raw", 256 << 20)?;
    let mib = super::baseline::AlignedBlock::new(1 << 20);
    let mut raw_off = 0u64;
    // Per round, each contender's records/s (bytes/s for the raw writes).
    let (mut r_ours, mut r_ret, mut r_copy, mut r_raw) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ours = || {
        let start = Instant::now();
        let n = append_for(&aof, &payload, slice)?;
        r_ours.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    let mut with_retention = || {
        let start = Instant::now();
        let n = append_for(&retained, &payload, slice)?;
        r_ret.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    let mut base = || {
        // The same frames copied into a buffer: no checksum, no lock, no I/O.
        let start = Instant::now();
        let (mut off, mut m) = (0usize, 0u64);
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
        r_copy.push(m as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    let mut disk = || -> BenchResult<()> {
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed() < slice {
            raw.file.write_all_at(mib.bytes(), raw_off % raw.size)?;
            raw_off += 1 << 20;
            bytes += 1 << 20;
        }
        r_raw.push(bytes as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    rotate(
        ctx.rounds(),
        &mut [&mut ours, &mut with_retention, &mut base, &mut disk],
    )?;
    let released = retained.flush_metrics().segments_released;
    let mb_ours: Vec<f64> = r_ours.iter().map(|r| r * W1_FRAME as f64 / 1e6).collect();
    let mb_raw: Vec<f64> = r_raw.iter().map(|b| b / 1e6).collect();
    let raw_desc = if raw.direct {
        "1 MiB O_DIRECT pwrite (no sync), pre-written file"
    } else {
        "1 MiB pwrite (buffered: no O_DIRECT here, no sync), pre-written file"
    };
    Ok(vec![
        rounds_row(
            "W1 buffered appends (100 B, 1 thread)",
            "records/s",
            "rec/s",
            (&r_ours, &r_copy),
            true,
            "memcpy of the same frames into a buffer",
        ),
        rounds_row(
            "W1 buffered appends (100 B, 1 thread)",
            "MB/s of frames",
            "MB/s",
            (&mb_ours, &mb_raw),
            true,
            raw_desc,
        ),
        rounds_row(
            "W1 while Size retention (64 MiB) releases segments",
            "records/s vs W1",
            "rec/s",
            (&r_ret, &r_ours),
            true,
            "W1 above, same run (the segments released are counted below)",
        ),
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
