//! Z1: the compressed segment format on realistic payloads (JSON-like log lines and
//! binary records): size against the raw segment, compression and whole-segment
//! decode speed against a plain copy of the same bytes, and the cost of reading one
//! record (inflate its chunk, check its frame) against a raw segment's mapped read.
//! Every figure is the median of five rounds (two in `--quick`), each round timing
//! every operation back to back; ratios are medians of the per-round ratios.
//! This measures the format alone (the level and chunk size the worker uses were
//! chosen on it); `z1_reads.rs` measures reads through a log the worker compressed.

use super::report::*;
use super::{BenchResult, Ctx};
use aof2_shards::compressed_format::{compress_segment, CompressedSegment};
use aof2_shards::format::{self, FrameKind, SegmentFooter, SegmentHeader, FOOTER_LEN};
use std::time::Instant;

const SEGMENT: u64 = 16 << 20;
const CHUNK: usize = 128 << 10;
const LEVEL: i32 = 3;

/// A sealed 16 MiB segment image filled with records from `make`.
fn sealed_segment(mut make: impl FnMut(u64) -> Vec<u8>) -> Vec<u8> {
    let header = SegmentHeader {
        version: aof2_shards::format::SEGMENT_VERSION,
        segment_id: 1,
        generation: 0x5eed,
        base_record_index: 0,
        created_at_ns: 1,
        file_size: SEGMENT,
        recycled: false,
    };
    let (hb, seed) = header.encode();
    let mut img = vec![0u8; SEGMENT as usize];
    img[..hb.len()].copy_from_slice(&hb);
    let limit = format::data_capacity(SEGMENT) as usize;
    let (mut off, mut prev, mut last, mut n) = (hb.len(), seed, format::NO_RECORD, 0u64);
    loop {
        let p = make(n);
        let (frame, crc) = format::encode_frame(seed, prev, FrameKind::Record, off as u32, n, &p);
        if off + frame.len() > limit {
            break;
        }
        img[off..off + frame.len()].copy_from_slice(&frame);
        (last, prev) = (off as u32, crc);
        off += frame.len();
        n += 1;
    }
    let footer = SegmentFooter {
        segment_id: 1,
        record_count: n,
        data_end: off as u64,
        last_frame_crc: prev,
        last_record_offset: last,
        sealed_at_ns: 2,
        index_offset: 0,
        index_len: 0,
        index_crc: 0,
        closed_cleanly: false,
    };
    let at = limit;
    img[at..at + FOOTER_LEN].copy_from_slice(&footer.encode(seed));
    img
}

fn json_line(i: u64) -> Vec<u8> {
    format!(
        r#"{{"ts":"2026-11-30T{:02}:{:02}:{:02}.{:06}Z","level":"{}","service":"{}","host":"node-{}","msg":"{} {} in {} ms","user_id":{},"items":{},"trace":"{:016x}"}}"#,
        i / 3_600_000 % 24,
        i / 60_000 % 60,
        i / 1000 % 60,
        (i * 7919) % 1_000_000,
        ["info", "info", "warn", "debug", "error"][(i % 5) as usize],
        ["orders", "payments", "search"][(i % 3) as usize],
        i % 17,
        ["order accepted", "payment settled", "query served", "cache refreshed"][(i % 4) as usize],
        100_000 + (i * 37) % 900_000,
        (i * 31) % 400,
        100_000 + (i * 7) % 50_000,
        i % 20,
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
    .into_bytes()
}

/// A 256-byte binary record: ids and counters (compressible) and a random digest.
fn binary_record(i: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(256);
    for k in 0..16u64 {
        p.extend_from_slice(&(i * 16 + k).to_le_bytes());
    }
    let mut x = i.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    while p.len() < 256 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.extend_from_slice(&x.to_le_bytes());
    }
    p
}

/// One round's timings (seconds): compress, decode every chunk, copy the segment, and
/// one record from the compressed and from the raw segment.
struct Round {
    compress: f64,
    decode: f64,
    copy: f64,
    one_z: f64,
    one_raw: f64,
}

/// One round of every measurement, back to back, so a slow spell of the machine hits
/// the figure and its baseline alike.
fn round(raw: &[u8], offsets: &[u64], copy: &mut [u8]) -> BenchResult<(Round, Vec<u8>)> {
    let t = Instant::now();
    let z = compress_segment(raw, LEVEL, CHUNK)?;
    let compress = t.elapsed().as_secs_f64();
    let c = CompressedSegment::parse(&z)?;
    let t = Instant::now();
    let mut total = 0usize;
    for i in 0..c.chunks.len() {
        total += c.inflate(i)?.len();
    }
    let decode = t.elapsed().as_secs_f64();
    let t = Instant::now();
    copy.copy_from_slice(std::hint::black_box(raw));
    let copy_s = t.elapsed().as_secs_f64();
    std::hint::black_box((&copy, total));
    // One record: inflate its chunk and check its frame, against checking it in place.
    let t = Instant::now();
    for &off in offsets {
        let i = c.chunk_for(off).ok_or("offset outside the chunks")?;
        let chunk = c.inflate(i)?;
        let at = (off - c.chunks[i].raw_start) as usize;
        match format::decode_frame(c.seed, &chunk[at..]) {
            format::FrameDecode::Frame(_) => {}
            _ => return Err("a record did not validate after inflation".into()),
        }
    }
    let one_z = t.elapsed().as_secs_f64() / offsets.len() as f64;
    let t = Instant::now();
    for &off in offsets {
        match format::decode_frame(c.seed, &raw[off as usize..]) {
            format::FrameDecode::Frame(_) => {}
            _ => return Err("a raw record did not validate".into()),
        }
    }
    let one_raw = t.elapsed().as_secs_f64() / offsets.len() as f64;
    let r = Round {
        compress,
        decode,
        copy: copy_s,
        one_z,
        one_raw,
    };
    Ok((r, z))
}

/// Z1's rows for one payload shape: medians over `rounds` rounds, each ratio the
/// median of the per-round ratios.
fn rows_for(name: &'static str, raw: &[u8], rounds: usize) -> BenchResult<Vec<Row>> {
    let header = SegmentHeader::decode(raw)?;
    let seed = match header {
        format::HeaderState::Valid(_, seed) => seed,
        format::HeaderState::Blank => return Err("a blank segment image".into()),
    };
    let footer = SegmentFooter::decode(
        &raw[format::data_capacity(SEGMENT) as usize..],
        seed,
        SEGMENT,
    )?
    .ok_or("a segment image without its footer")?;
    let offsets: Vec<u64> = format::frames(seed, raw, footer.data_end)
        .step_by(97)
        .map(|f| f.map(|f| f.offset).map_err(|(o, w)| format!("{o}: {w}")))
        .collect::<Result<_, _>>()?;
    let data = (footer.data_end - format::HEADER_LEN as u64) as f64;
    let mut copy = vec![0u8; raw.len()];
    let (mut runs, mut z) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (r, zb) = round(raw, &offsets, &mut copy)?;
        runs.push(r);
        z = zb;
    }
    let gbps =
        |f: fn(&Round) -> f64| -> Vec<f64> { runs.iter().map(|r| data / f(r) / 1e9).collect() };
    let us = |f: fn(&Round) -> f64| -> Vec<f64> { runs.iter().map(|r| f(r) * 1e6).collect() };
    let copy_gbps = gbps(|r| r.copy);
    let row = rows_of(name);
    Ok(vec![
        row(
            "file bytes vs raw data bytes",
            "MiB",
            z.len() as f64 / (1 << 20) as f64,
            data / (1 << 20) as f64,
            false,
            "the raw segment's frames",
        ),
        rounds_row(
            name,
            "compress (zstd 3, 128 KiB chunks)",
            "GB/s",
            (&gbps(|r| r.compress), &copy_gbps),
            true,
            "memcpy of the segment",
        ),
        rounds_row(
            name,
            "decode every chunk",
            "GB/s",
            (&gbps(|r| r.decode), &copy_gbps),
            true,
            "memcpy of the segment",
        ),
        rounds_row(
            name,
            "one record: inflate its chunk, check its frame",
            "us",
            (&us(|r| r.one_z), &us(|r| r.one_raw)),
            false,
            "checking the frame in a mapped raw segment",
        ),
    ])
}

/// Z1: the compressed segment format, JSON-like lines and binary records.
pub fn z1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let rounds = if ctx.quick { 2 } else { 5 };
    let mut rows = rows_for(
        "Z1 compressed format, JSON-like log lines",
        &sealed_segment(json_line),
        rounds,
    )?;
    rows.extend(rows_for(
        "Z1 compressed format, 256-byte binary records",
        &sealed_segment(binary_record),
        rounds,
    )?);
    Ok(rows)
}
