//! The compressed form of a sealed segment (`<id:020>.zst`): pure encode and decode, no
//! I/O. The raw segment's bytes are kept exactly (its header, frames and footer), cut
//! at frame boundaries into chunks of about `chunk_target` bytes, each compressed into
//! an independent zstd frame, so one record costs one chunk's inflation and a cursor
//! streams chunk by chunk. Inflated bytes are the raw segment's own, at their own
//! offsets: record ids, frame checksums and the CRC chain are checked as in a raw file.
//!
//! Layout (little-endian):
//!
//! ```text
//! [0, 4096)          the raw segment's header (64 bytes) and its seal footer (80 bytes,
//!                    at 64), then zeros
//! [4096, index)      the chunks' zstd frames, back to back
//! [index, trailer)   one 32-byte entry per chunk:
//!                      raw_start u64   offset of the chunk in the raw segment
//!                      raw_len u32     its length there
//!                      comp_len u32    its zstd frame's length
//!                      comp_off u64    where that frame starts in this file
//!                      comp_crc u32    CRC-32 of the zstd frame
//!                      reserved u32    (zero)
//! [size - 64, size)  trailer:
//!                      [0, 8)   magic "AOF2ZST\0"
//!                      [8, 10)  format version (1)
//!                      [10, 12) trailer length (64)
//!                      [12, 16) flags (zero)
//!                      [16, 24) index offset
//!                      [24, 28) chunk count
//!                      [28, 32) CRC-32 of the index
//!                      [32, 40) raw bytes compressed (64 .. data end)
//!                      [40, 44) zstd level used
//!                      [44, 60) reserved (zero)
//!                      [60, 64) CRC-32 of [0, 60), seeded with the segment seed
//! ```
//!
//! A file is trusted only when its trailer, index, header and footer all validate and
//! the chunks tile the raw data exactly; each chunk's CRC is checked before inflating.

use crate::format::{
    self, FormatError, HeaderState, SegmentFooter, SegmentHeader, BLOCK, FOOTER_LEN, FOOTER_REGION,
    FORMAT_VERSION, HEADER_LEN,
};
use crate::zstd_codec;

/// First 8 bytes of a compressed segment's trailer.
pub const ZST_MAGIC: [u8; 8] = *b"AOF2ZST\0";
/// Length of the trailer at the end of a compressed segment.
pub const TRAILER_LEN: usize = 64;
/// Length of one index entry.
pub const ENTRY_LEN: usize = 32;
/// Where the first chunk starts.
pub const CHUNKS_AT: usize = BLOCK;

/// One chunk of a compressed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the chunk's bytes in the raw segment.
    pub raw_start: u64,
    /// Their length.
    pub raw_len: u32,
    /// Length of its zstd frame.
    pub comp_len: u32,
    /// Where that frame starts in the compressed file.
    pub comp_off: u64,
    /// CRC-32 of the zstd frame.
    pub comp_crc: u32,
}

/// A compressed segment file, checked and indexed (borrowing the file's bytes).
#[derive(Debug)]
pub struct CompressedSegment<'a> {
    /// The raw segment's header.
    pub header: SegmentHeader,
    /// Its frame seed.
    pub seed: u32,
    /// Its seal footer.
    pub footer: SegmentFooter,
    /// The chunks, in raw order.
    pub chunks: Vec<Chunk>,
    /// The zstd level it was written with.
    pub level: i32,
    file: &'a [u8],
}

/// What a reader keeps of a checked compressed segment file (without borrowing it).
#[derive(Debug, Clone)]
pub struct CompressedIndex {
    /// The raw segment's header.
    pub header: SegmentHeader,
    /// Its frame seed.
    pub seed: u32,
    /// Its seal footer.
    pub footer: SegmentFooter,
    /// The chunks, in raw order.
    pub chunks: Vec<Chunk>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Compresses a sealed raw segment `raw` (the whole file) at zstd `level`, in chunks of
/// about `chunk_target` bytes cut at frame boundaries. Refuses an image that is not a
/// sealed segment whose frames all validate: only verified bytes are ever compressed.
pub fn compress_segment(
    raw: &[u8],
    level: i32,
    chunk_target: usize,
) -> Result<Vec<u8>, FormatError> {
    compress_segment_until(raw, level, chunk_target, &|| false).map(|c| c.expect("never stopped"))
}

/// As [`compress_segment`], asking `stop` before each chunk: `Ok(None)` once it says
/// to stop (a closing log does not wait for a whole segment).
pub fn compress_segment_until(
    raw: &[u8],
    level: i32,
    chunk_target: usize,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Vec<u8>>, FormatError> {
    let HeaderState::Valid(header, seed) = SegmentHeader::decode(raw)? else {
        return Err(FormatError::BadField(
            "a blank segment has nothing to compress",
        ));
    };
    if raw.len() as u64 != header.file_size {
        return Err(FormatError::BadField("file size differs from the header's"));
    }
    let footer_at = (header.file_size - FOOTER_REGION) as usize;
    let footer = SegmentFooter::decode(&raw[footer_at..], seed, header.file_size)?.ok_or(
        FormatError::BadField("an unsealed segment is not compressed"),
    )?;
    let data_end = footer.data_end as usize;
    // Chunk boundaries: frame starts, every `chunk_target` bytes or more.
    let mut cuts = vec![HEADER_LEN];
    let mut frames = format::frames(seed, raw, footer.data_end);
    for f in frames.by_ref() {
        let f =
            f.map_err(|_| FormatError::BadField("a frame of the raw segment fails its checks"))?;
        let start = f.offset as usize;
        if start - cuts.last().expect("a cut") >= chunk_target {
            cuts.push(start);
        }
    }
    if frames.position() != footer.data_end {
        return Err(FormatError::BadField(
            "frames do not reach the sealed data end",
        ));
    }
    if *cuts.last().expect("a cut") < data_end {
        cuts.push(data_end);
    }
    let mut out = vec![0u8; CHUNKS_AT];
    out[..HEADER_LEN].copy_from_slice(&raw[..HEADER_LEN]);
    out[HEADER_LEN..HEADER_LEN + FOOTER_LEN]
        .copy_from_slice(&raw[footer_at..footer_at + FOOTER_LEN]);
    let mut chunks = Vec::with_capacity(cuts.len());
    // One context for the segment (making one per chunk costs more than small chunks).
    let mut zc = zstd_codec::Compressor::new(level)?;
    for w in cuts.windows(2) {
        if stop() {
            return Ok(None);
        }
        let (a, b) = (w[0], w[1]);
        let z = zc.compress(&raw[a..b])?;
        chunks.push(Chunk {
            raw_start: a as u64,
            raw_len: (b - a) as u32,
            comp_len: z.len() as u32,
            comp_off: out.len() as u64,
            comp_crc: crc32fast::hash(&z),
        });
        out.extend_from_slice(&z);
    }
    let index_at = out.len() as u64;
    for c in &chunks {
        out.extend_from_slice(&c.raw_start.to_le_bytes());
        out.extend_from_slice(&c.raw_len.to_le_bytes());
        out.extend_from_slice(&c.comp_len.to_le_bytes());
        out.extend_from_slice(&c.comp_off.to_le_bytes());
        out.extend_from_slice(&c.comp_crc.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
    }
    let index_crc = crc32fast::hash(&out[index_at as usize..]);
    let mut t = [0u8; TRAILER_LEN];
    t[0..8].copy_from_slice(&ZST_MAGIC);
    t[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    t[10..12].copy_from_slice(&(TRAILER_LEN as u16).to_le_bytes());
    t[16..24].copy_from_slice(&index_at.to_le_bytes());
    t[24..28].copy_from_slice(&(chunks.len() as u32).to_le_bytes());
    t[28..32].copy_from_slice(&index_crc.to_le_bytes());
    t[32..40].copy_from_slice(&((data_end - HEADER_LEN) as u64).to_le_bytes());
    t[40..44].copy_from_slice(&level.to_le_bytes());
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(&t[0..60]);
    t[60..64].copy_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&t);
    Ok(Some(out))
}

/// Checks that compressed file `file` holds exactly raw segment `raw`: it parses, and
/// every chunk inflates to the raw bytes at its offset. Run before a raw file is given
/// up for its compressed copy.
pub fn matches_raw(file: &[u8], raw: &[u8]) -> Result<(), FormatError> {
    let c = CompressedSegment::parse(file)?;
    if c.header.file_size != raw.len() as u64 || file[..HEADER_LEN] != raw[..HEADER_LEN] {
        return Err(FormatError::BadField(
            "the compressed file holds another segment header",
        ));
    }
    for (i, ch) in c.chunks.iter().enumerate() {
        let bytes = c.inflate(i)?;
        let at = ch.raw_start as usize;
        if raw.get(at..at + bytes.len()) != Some(&bytes[..]) {
            return Err(FormatError::BadField(
                "a chunk inflates to other bytes than the raw segment's",
            ));
        }
    }
    Ok(())
}

impl<'a> CompressedSegment<'a> {
    /// Checks and indexes a compressed segment file. Every structure is validated:
    /// trailer (seeded with the segment seed), index, the raw header and footer, and
    /// that the chunks tile the raw data region exactly. Chunks are checked when read.
    pub fn parse(file: &'a [u8]) -> Result<CompressedSegment<'a>, FormatError> {
        Self::parse_at(file).map_err(|e| e.1)
    }

    /// As [`Self::parse`], with the offset in the file of the structure that failed
    /// (0 for the header, the footer's copy in block 0, the trailer's or the index's
    /// start, or the failing index entry's).
    pub fn parse_at(file: &'a [u8]) -> Result<CompressedSegment<'a>, (u64, FormatError)> {
        let at = |off: usize| move |e: FormatError| (off as u64, e);
        if file.len() < CHUNKS_AT + TRAILER_LEN {
            return Err((
                0,
                FormatError::Truncated {
                    needed: CHUNKS_AT + TRAILER_LEN,
                    have: file.len(),
                },
            ));
        }
        let HeaderState::Valid(header, seed) = SegmentHeader::decode(file).map_err(at(0))? else {
            return Err((
                0,
                FormatError::BadField("blank header in a compressed segment"),
            ));
        };
        let footer = SegmentFooter::decode(&file[HEADER_LEN..], seed, header.file_size)
            .map_err(at(HEADER_LEN))?
            .ok_or((
                HEADER_LEN as u64,
                FormatError::BadField("no seal footer in a compressed segment"),
            ))?;
        let trailer_at = file.len() - TRAILER_LEN;
        let bad_trailer = at(trailer_at);
        let t = &file[trailer_at..];
        if t[0..8] != ZST_MAGIC {
            return Err(bad_trailer(FormatError::BadMagic));
        }
        let version = u16::from_le_bytes([t[8], t[9]]);
        if version != FORMAT_VERSION {
            return Err(bad_trailer(FormatError::UnsupportedVersion(version)));
        }
        let stored = u32_at(t, 60);
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(&t[0..60]);
        let computed = h.finalize();
        if stored != computed {
            return Err(bad_trailer(FormatError::BadChecksum { stored, computed }));
        }
        if u16::from_le_bytes([t[10], t[11]]) as usize != TRAILER_LEN
            || u32_at(t, 12) != 0
            || t[44..60].iter().any(|&b| b != 0)
        {
            return Err(bad_trailer(FormatError::BadField("trailer")));
        }
        let index_at = u64_at(t, 16) as usize;
        let count = u32_at(t, 24) as usize;
        let index_end = index_at
            .checked_add(
                count
                    .checked_mul(ENTRY_LEN)
                    .ok_or(bad_trailer(FormatError::BadField("index")))?,
            )
            .ok_or(bad_trailer(FormatError::BadField("index")))?;
        if index_at < CHUNKS_AT || index_end != trailer_at {
            return Err(bad_trailer(FormatError::BadField("index bounds")));
        }
        let index = &file[index_at..index_end];
        let stored = u32_at(t, 28);
        let computed = crc32fast::hash(index);
        if stored != computed {
            return Err((
                index_at as u64,
                FormatError::BadChecksum { stored, computed },
            ));
        }
        let mut chunks = Vec::with_capacity(count);
        let (mut raw_at, mut comp_at) = (HEADER_LEN as u64, CHUNKS_AT as u64);
        for (i, e) in index.chunks_exact(ENTRY_LEN).enumerate() {
            let c = Chunk {
                raw_start: u64_at(e, 0),
                raw_len: u32_at(e, 8),
                comp_len: u32_at(e, 12),
                comp_off: u64_at(e, 16),
                comp_crc: u32_at(e, 24),
            };
            if c.raw_start != raw_at
                || c.comp_off != comp_at
                || c.raw_len == 0
                || u32_at(e, 28) != 0
            {
                return Err((
                    (index_at + i * ENTRY_LEN) as u64,
                    FormatError::BadField("index entries do not tile the data"),
                ));
            }
            raw_at += u64::from(c.raw_len);
            comp_at += u64::from(c.comp_len);
            chunks.push(c);
        }
        if raw_at != footer.data_end || comp_at != index_at as u64 {
            return Err((
                index_at as u64,
                FormatError::BadField("chunks do not cover the sealed data"),
            ));
        }
        if u64_at(t, 32) != footer.data_end - HEADER_LEN as u64 {
            return Err(bad_trailer(FormatError::BadField("raw byte count")));
        }
        Ok(CompressedSegment {
            header,
            seed,
            footer,
            chunks,
            level: u32_at(t, 40) as i32,
            file,
        })
    }

    /// The parts a reader keeps.
    pub fn into_index(self) -> CompressedIndex {
        CompressedIndex {
            header: self.header,
            seed: self.seed,
            footer: self.footer,
            chunks: self.chunks,
        }
    }

    /// The chunk holding raw offset `off`, if it lies in the data.
    pub fn chunk_for(&self, off: u64) -> Option<usize> {
        chunk_index(&self.chunks, off)
    }

    /// Inflates chunk `i`: its raw bytes, after checking its frame's CRC and length.
    pub fn inflate(&self, i: usize) -> Result<Vec<u8>, FormatError> {
        inflate_chunk(self.file, &self.chunks[i])
    }

    /// Bytes of the raw data region (header excluded) this file holds.
    pub fn raw_data_bytes(&self) -> u64 {
        self.footer.data_end - HEADER_LEN as u64
    }
}

/// Which of `chunks` (in raw order, tiling the data) holds raw offset `off`, if any.
pub fn chunk_index(chunks: &[Chunk], off: u64) -> Option<usize> {
    let i = chunks.partition_point(|c| c.raw_start <= off);
    let c = chunks.get(i.checked_sub(1)?)?;
    (off < c.raw_start + u64::from(c.raw_len)).then_some(i - 1)
}

/// Inflates chunk `c` of the compressed file `file` (checked by
/// [`CompressedSegment::parse`]): its raw bytes, after checking its zstd frame's CRC and
/// the inflated length.
pub fn inflate_chunk(file: &[u8], c: &Chunk) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    inflate_chunk_into(file, c, &mut out)?;
    Ok(out)
}

/// As [`inflate_chunk`], into `out` (cleared first; its memory is reused).
pub fn inflate_chunk_into(file: &[u8], c: &Chunk, out: &mut Vec<u8>) -> Result<(), FormatError> {
    let z = file
        .get(c.comp_off as usize..(c.comp_off + u64::from(c.comp_len)) as usize)
        .ok_or(FormatError::BadField("chunk outside the file"))?;
    let computed = crc32fast::hash(z);
    if computed != c.comp_crc {
        return Err(FormatError::BadChecksum {
            stored: c.comp_crc,
            computed,
        });
    }
    out.clear();
    out.reserve(c.raw_len as usize);
    let n = zstd_codec::decompress_into(z, out)?;
    if n != c.raw_len as usize || out.len() != n {
        return Err(FormatError::BadField("inflated length"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_frame, FrameKind};

    /// A sealed raw segment of `file_size` bytes holding `records` (seed from its header).
    fn raw_segment(records: &[Vec<u8>], file_size: u64) -> Vec<u8> {
        let header = SegmentHeader {
            version: crate::format::SEGMENT_VERSION,
            segment_id: 3,
            generation: 0x1234_5678,
            base_record_index: 10,
            created_at_ns: 1,
            file_size,
            recycled: false,
        };
        let (hb, seed) = header.encode();
        let mut img = vec![0u8; file_size as usize];
        img[..HEADER_LEN].copy_from_slice(&hb);
        let (mut off, mut prev, mut last) = (HEADER_LEN, seed, format::NO_RECORD);
        for (i, r) in records.iter().enumerate() {
            let (frame, crc) = encode_frame(seed, prev, FrameKind::Record, off as u32, i as u64, r);
            img[off..off + frame.len()].copy_from_slice(&frame);
            last = off as u32;
            off += frame.len();
            prev = crc;
        }
        let footer = SegmentFooter {
            segment_id: 3,
            record_count: records.len() as u64,
            data_end: off as u64,
            last_frame_crc: prev,
            last_record_offset: last,
            sealed_at_ns: 2,
            index_offset: 0,
            index_len: 0,
            index_crc: 0,
            closed_cleanly: false,
        };
        let at = (file_size - FOOTER_REGION) as usize;
        img[at..at + FOOTER_LEN].copy_from_slice(&footer.encode(seed));
        img
    }

    fn json_lines(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!(
                    r#"{{"ts":"2026-11-30T07:{:02}:{:02}.{:03}Z","level":"{}","service":"orders","msg":"order {} accepted","user":{},"items":{},"latency_ms":{}}}"#,
                    i / 60 % 60,
                    i % 60,
                    i % 1000,
                    ["info", "warn", "debug"][i % 3],
                    100_000 + i * 7,
                    i % 977,
                    i % 13,
                    (i * 31) % 250
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn a_segment_round_trips_chunk_by_chunk_and_shrinks_json_lines() {
        let recs = json_lines(4000);
        let raw = raw_segment(&recs, 1 << 20);
        let z = compress_segment(&raw, 3, 64 << 10).unwrap();
        let c = CompressedSegment::parse(&z).unwrap();
        assert!(c.chunks.len() > 3, "{}", c.chunks.len());
        let data = c.raw_data_bytes();
        assert!(
            (z.len() as u64) * 100 <= data * 40,
            "{} bytes compressed from {data}",
            z.len()
        );
        // Every chunk inflates to the raw bytes at its offsets, which still validate.
        let mut rebuilt = raw[..HEADER_LEN].to_vec();
        for i in 0..c.chunks.len() {
            rebuilt.extend_from_slice(&c.inflate(i).unwrap());
        }
        assert_eq!(rebuilt[..], raw[..c.footer.data_end as usize]);
        let n = format::frames(c.seed, &rebuilt, c.footer.data_end).count();
        assert_eq!(n, recs.len());
        // Random access: the chunk of any frame offset holds it.
        let first = c.chunks[2].raw_start;
        assert_eq!(c.chunk_for(first), Some(2));
        assert_eq!(c.chunk_for(first - 1), Some(1));
        assert_eq!(c.chunk_for(c.footer.data_end), None);
        assert_eq!(c.chunk_for(10), None);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_caught_before_a_wrong_byte_is_returned() {
        let raw = raw_segment(&json_lines(600), 256 << 10);
        let z = compress_segment(&raw, 1, 16 << 10).unwrap();
        let good = CompressedSegment::parse(&z).unwrap();
        let expect: Vec<Vec<u8>> = (0..good.chunks.len())
            .map(|i| good.inflate(i).unwrap())
            .collect();
        // Every byte of the file, one at a time, in a stride that covers each region.
        for at in (0..z.len()).step_by(7) {
            let mut bad = z.clone();
            bad[at] ^= 0x10;
            match CompressedSegment::parse(&bad) {
                Err(_) => {}
                Ok(c) => {
                    for (i, e) in expect.iter().enumerate() {
                        if let Ok(got) = c.inflate(i) {
                            assert_eq!(&got, e, "byte {at} changed chunk {i} silently");
                        }
                    }
                    // Padding in block 0 is the only place a flip can go unnoticed.
                    let region = (HEADER_LEN + FOOTER_LEN..CHUNKS_AT).contains(&at);
                    assert!(
                        region || (0..expect.len()).any(|i| c.inflate(i).is_err()),
                        "byte {at} flipped and nothing noticed"
                    );
                }
            }
        }
    }

    #[test]
    fn unsealed_blank_or_damaged_segments_are_never_compressed() {
        let raw = raw_segment(&json_lines(50), 64 << 10);
        let mut unsealed = raw.clone();
        let at = unsealed.len() - BLOCK;
        unsealed[at..].fill(0);
        assert!(compress_segment(&unsealed, 3, 4096).is_err());
        assert!(compress_segment(&vec![0u8; 64 << 10], 3, 4096).is_err());
        let mut damaged = raw.clone();
        damaged[HEADER_LEN + 40] ^= 1;
        assert!(compress_segment(&damaged, 3, 4096).is_err());
        // A truncated compressed file is refused.
        let z = compress_segment(&raw, 3, 4096).unwrap();
        assert!(CompressedSegment::parse(&z[..z.len() - 1]).is_err());
        assert!(CompressedSegment::parse(&z[..CHUNKS_AT]).is_err());
    }
}
