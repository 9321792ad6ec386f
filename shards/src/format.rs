//! On-disk format. Pure functions over byte slices: no I/O, no panics on any input.
//! Segments are written in version 2 (version 1 without frame flags, so without atomic
//! batches; such segments are still read, never continued).
//!
//! A segment file is laid out as:
//!
//! ```text
//! [0, 64)                      segment header
//! [64, data_end)               record and padding frames, each 8-byte aligned
//! [data_end, size - 4096)      zeros (the file is zero-written before use), or, in a
//!                              recycled file (header flag), stale bytes of its earlier use
//! [size - 4096, size)          footer region: the seal footer in its first 80 bytes once sealed
//! ```
//!
//! A recycled file's stale bytes may hold whole frames of its earlier use; they never
//! validate, because every checksum here is seeded with the header's checksum, and a
//! recycled file gets a new header (new id, new random generation).
//!
//! Every checksum is CRC-32 (IEEE, `crc32fast`). Frame and footer checksums are seeded
//! with the header checksum, which covers the segment id and a per-segment random
//! generation, so a frame left by an earlier use of a file, or copied from another
//! segment, never validates. Each frame also stores the checksum of the frame before
//! it (`prev_crc`), so frames cannot be reordered, dropped or duplicated unnoticed.
//! Byte-by-byte layouts are in docs/format.md.

/// Version of the release mark and of a compressed segment's trailer; newer versions
/// are refused, not guessed at.
pub const FORMAT_VERSION: u16 = 1;
/// Version written into new segment headers: 2 added frame flags (atomic batches).
pub const SEGMENT_VERSION: u16 = 2;
/// The oldest segment version still read (1: no frame flags).
pub const SEGMENT_VERSION_MIN: u16 = 1;
/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"AOF2SEG\0";
/// First 8 bytes of a seal footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"AOF2END\0";
/// Size of the segment header; the first frame starts here.
pub const HEADER_LEN: usize = 64;
/// Size of a frame header; the payload follows it.
pub const FRAME_HEADER_LEN: usize = 32;
/// Frames start and end on multiples of this.
pub const FRAME_ALIGN: usize = 8;
/// The last this-many bytes of every segment file hold the footer (and later a sparse index).
pub const FOOTER_REGION: u64 = 4096;
/// Encoded size of the seal footer.
pub const FOOTER_LEN: usize = 80;
/// I/O block: file sizes, write offsets and lengths are multiples of it.
pub const BLOCK: usize = 4096;
/// Smallest segment file the format allows (header block + one data block + footer region).
pub const MIN_SEGMENT_FILE: u64 = 3 * BLOCK as u64;
/// `RecordId` keeps the offset in 32 bits, so no segment file may reach 4 GiB.
pub const MAX_SEGMENT_FILE: u64 = 1 << 31;

/// Why a byte range did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The magic bytes are not ours.
    BadMagic,
    /// Written by a newer (or unknown) format version.
    UnsupportedVersion(u16),
    /// The stored checksum does not match the bytes.
    BadChecksum {
        /// The checksum in the bytes.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// A field holds a value v1 never writes.
    BadField(&'static str),
}

impl std::error::Error for FormatError {}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::Truncated { needed, have } => {
                write!(f, "truncated: needs {needed} bytes, {have} present")
            }
            FormatError::BadMagic => write!(f, "bad magic"),
            FormatError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "format version {v}, this build reads up to {FORMAT_VERSION}"
                )
            }
            FormatError::BadChecksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            FormatError::BadField(name) => write!(f, "invalid field `{name}`"),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Rounds `n` up to the frame alignment.
pub const fn align_frame(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Total on-disk size of a frame carrying `payload_len` bytes (header, payload, padding).
pub const fn frame_size(payload_len: usize) -> usize {
    align_frame(FRAME_HEADER_LEN + payload_len)
}

/// Where frames may end in a file of `file_size` bytes (the footer region follows).
pub const fn data_capacity(file_size: u64) -> u64 {
    file_size.saturating_sub(FOOTER_REGION)
}

// ---------------------------------------------------------------------------------------
// Segment header

/// The segment header, at offset 0 of every used segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version it was written with ([`SEGMENT_VERSION`] for new segments).
    pub version: u16,
    /// The segment's id (also in its file name).
    pub segment_id: u64,
    /// Random per segment; part of the checksum seed of every frame in it.
    pub generation: u32,
    /// Number of records in all earlier segments of the log.
    pub base_record_index: u64,
    /// When the segment was started (ns since the Unix epoch).
    pub created_at_ns: u64,
    /// Size of the file, footer region included.
    pub file_size: u64,
    /// The file was used before (a recycled spare): bytes past the frames are stale,
    /// not zeros (flags bit 0).
    pub recycled: bool,
}

/// Header flag: the file is recycled (see [`SegmentHeader::recycled`]).
pub const HEADER_FLAG_RECYCLED: u32 = 1;

/// What the first bytes of a segment file hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderState {
    /// All zeros: a prepared file no record was ever written to.
    Blank,
    /// A valid header, with its checksum (the seed of every frame and the footer).
    Valid(SegmentHeader, u32),
}

impl SegmentHeader {
    /// Encodes the header and returns it with its checksum.
    pub fn encode(&self) -> ([u8; HEADER_LEN], u32) {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        let flags = if self.recycled {
            HEADER_FLAG_RECYCLED
        } else {
            0
        };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.generation.to_le_bytes());
        // 28..32 reserved.
        b[32..40].copy_from_slice(&self.base_record_index.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_at_ns.to_le_bytes());
        b[48..56].copy_from_slice(&self.file_size.to_le_bytes());
        // 56..60 reserved.
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        (b, crc)
    }

    /// Decodes the first bytes of a segment file.
    pub fn decode(b: &[u8]) -> Result<HeaderState, FormatError> {
        if b.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                needed: HEADER_LEN,
                have: b.len(),
            });
        }
        let b = &b[..HEADER_LEN];
        if b.iter().all(|&x| x == 0) {
            return Ok(HeaderState::Blank);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16_at(b, 8);
        if !(SEGMENT_VERSION_MIN..=SEGMENT_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let stored = u32_at(b, 60);
        let computed = crc32fast::hash(&b[0..60]);
        if stored != computed {
            return Err(FormatError::BadChecksum { stored, computed });
        }
        if u16_at(b, 10) as usize != HEADER_LEN {
            return Err(FormatError::BadField("header_len"));
        }
        if u32_at(b, 12) & !HEADER_FLAG_RECYCLED != 0 {
            return Err(FormatError::BadField("flags"));
        }
        if u32_at(b, 28) != 0 || u32_at(b, 56) != 0 {
            return Err(FormatError::BadField("reserved"));
        }
        let h = SegmentHeader {
            version,
            segment_id: u64_at(b, 16),
            generation: u32_at(b, 24),
            base_record_index: u64_at(b, 32),
            created_at_ns: u64_at(b, 40),
            file_size: u64_at(b, 48),
            recycled: u32_at(b, 12) & HEADER_FLAG_RECYCLED != 0,
        };
        if h.file_size < MIN_SEGMENT_FILE
            || h.file_size > MAX_SEGMENT_FILE
            || !h.file_size.is_multiple_of(BLOCK as u64)
        {
            return Err(FormatError::BadField("file_size"));
        }
        Ok(HeaderState::Valid(h, stored))
    }
}

// ---------------------------------------------------------------------------------------
// Frames

/// Frame types. Zero is never valid, so zero-filled space never parses as a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A user record.
    Record = 1,
    /// Skipped space: readers step over it; it is not a record.
    Padding = 2,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<FrameKind> {
        match v {
            1 => Some(FrameKind::Record),
            2 => Some(FrameKind::Padding),
            _ => None,
        }
    }
}

/// The fixed fields of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Checksum of bytes [4, frame end), seeded with the segment seed.
    pub crc: u32,
    /// `crc` of the previous frame in the segment; the segment seed for the first one.
    pub prev_crc: u32,
    /// Record or padding.
    pub kind: FrameKind,
    /// Frame flags ([`FRAME_FLAG_BATCH_MORE`]); zero in segments of format version 1.
    pub flags: u8,
    /// Payload length.
    pub len: u32,
    /// Every byte of the segment before this offset was durable when the frame was
    /// appended. Recovery uses it to tell a torn tail from corruption of synced data.
    pub synced_before: u32,
    /// When the record was appended (ns since the Unix epoch).
    pub timestamp_ns: u64,
}

impl FrameHeader {
    /// Total frame size on disk.
    pub fn size(&self) -> usize {
        frame_size(self.len as usize)
    }

    /// The record is not the last of its atomic batch: the batch's next record follows.
    pub fn continues_batch(&self) -> bool {
        self.flags & FRAME_FLAG_BATCH_MORE != 0
    }
}

/// Frame flag (version 2): this record is one of an atomic batch and the batch's next
/// record follows it. The last record of a batch, and every single append, has it
/// clear. A segment whose valid frames end in a record with it set ends in a batch
/// that was never completed (never acknowledged): every reader and recovery stop at
/// that batch's first record.
pub const FRAME_FLAG_BATCH_MORE: u8 = 1;

/// Encodes bytes [4, 32) of a frame header: everything except the checksum.
pub fn encode_frame_tail(
    prev_crc: u32,
    kind: FrameKind,
    flags: u8,
    len: u32,
    synced_before: u32,
    timestamp_ns: u64,
) -> [u8; FRAME_HEADER_LEN - 4] {
    let mut t = [0u8; FRAME_HEADER_LEN - 4];
    t[0..4].copy_from_slice(&prev_crc.to_le_bytes());
    t[4] = kind as u8;
    t[5] = flags;
    // t[6..8] reserved.
    t[8..12].copy_from_slice(&len.to_le_bytes());
    t[12..16].copy_from_slice(&synced_before.to_le_bytes());
    // t[16..20] reserved.
    t[20..28].copy_from_slice(&timestamp_ns.to_le_bytes());
    t
}

const ZERO_PAD: [u8; FRAME_ALIGN] = [0; FRAME_ALIGN];

/// Checksum of a frame from its parts: the header tail, the payload and the zero padding.
pub fn frame_crc(seed: u32, tail: &[u8; FRAME_HEADER_LEN - 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(tail);
    h.update(payload);
    let pad = frame_size(payload.len()) - FRAME_HEADER_LEN - payload.len();
    h.update(&ZERO_PAD[..pad]);
    h.finalize()
}

/// Checksum of a frame from its bytes `[4, frame end)` in one piece (equal to
/// [`frame_crc`] of its parts).
pub fn frame_crc_of(seed: u32, from_4: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(from_4);
    h.finalize()
}

/// Encodes a whole frame into a new vector (tests and tools; the log writes in place).
pub fn encode_frame(
    seed: u32,
    prev_crc: u32,
    kind: FrameKind,
    synced_before: u32,
    timestamp_ns: u64,
    payload: &[u8],
) -> (Vec<u8>, u32) {
    encode_frame_with_flags(
        seed,
        prev_crc,
        kind,
        0,
        synced_before,
        timestamp_ns,
        payload,
    )
}

/// [`encode_frame`] with frame flags (a batch's records but its last carry
/// [`FRAME_FLAG_BATCH_MORE`]).
pub fn encode_frame_with_flags(
    seed: u32,
    prev_crc: u32,
    kind: FrameKind,
    flags: u8,
    synced_before: u32,
    timestamp_ns: u64,
    payload: &[u8],
) -> (Vec<u8>, u32) {
    let tail = encode_frame_tail(
        prev_crc,
        kind,
        flags,
        payload.len() as u32,
        synced_before,
        timestamp_ns,
    );
    let crc = frame_crc(seed, &tail, payload);
    let mut v = Vec::with_capacity(frame_size(payload.len()));
    v.extend_from_slice(&crc.to_le_bytes());
    v.extend_from_slice(&tail);
    v.extend_from_slice(payload);
    v.resize(frame_size(payload.len()), 0);
    (v, crc)
}

/// Result of decoding at one offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameDecode {
    /// A frame whose checksum holds.
    Frame(FrameHeader),
    /// A zero header: no frame was ever written here.
    Blank,
    /// Something that is not a valid frame.
    Invalid(FormatError),
}

/// Decodes the frame at the start of `b` (which may run to the end of the data area).
/// `seed` is the segment seed. The chain (`prev_crc`) is the caller's to check.
pub fn decode_frame(seed: u32, b: &[u8]) -> FrameDecode {
    if b.len() < FRAME_HEADER_LEN {
        if b.iter().all(|&x| x == 0) {
            return FrameDecode::Blank;
        }
        return FrameDecode::Invalid(FormatError::Truncated {
            needed: FRAME_HEADER_LEN,
            have: b.len(),
        });
    }
    let h = &b[..FRAME_HEADER_LEN];
    if h.iter().all(|&x| x == 0) {
        return FrameDecode::Blank;
    }
    let Some(kind) = FrameKind::from_u8(h[8]) else {
        return FrameDecode::Invalid(FormatError::BadField("kind"));
    };
    if h[10] != 0 || h[11] != 0 || u32_at(h, 20) != 0 {
        return FrameDecode::Invalid(FormatError::BadField("reserved"));
    }
    let flags = h[9];
    if flags & !FRAME_FLAG_BATCH_MORE != 0 || (flags != 0 && kind != FrameKind::Record) {
        return FrameDecode::Invalid(FormatError::BadField("flags"));
    }
    let len = u32_at(h, 12);
    let size = frame_size(len as usize);
    if size > b.len() {
        return FrameDecode::Invalid(FormatError::Truncated {
            needed: size,
            have: b.len(),
        });
    }
    let stored = u32_at(h, 0);
    let mut hasher = crc32fast::Hasher::new_with_initial(seed);
    hasher.update(&b[4..size]);
    let computed = hasher.finalize();
    if stored != computed {
        return FrameDecode::Invalid(FormatError::BadChecksum { stored, computed });
    }
    FrameDecode::Frame(FrameHeader {
        crc: stored,
        prev_crc: u32_at(h, 4),
        kind,
        flags,
        len,
        synced_before: u32_at(h, 16),
        timestamp_ns: u64_at(h, 24),
    })
}

// ---------------------------------------------------------------------------------------
// Seal footer

/// Written at `file_size - FOOTER_REGION` when a segment is sealed; immutable afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFooter {
    /// The segment's id.
    pub segment_id: u64,
    /// Record frames in the segment.
    pub record_count: u64,
    /// Frames occupy [HEADER_LEN, data_end).
    pub data_end: u64,
    /// `crc` of the last frame (the segment seed when there is none): closes the chain.
    pub last_frame_crc: u32,
    /// Offset of the last record frame, `NO_RECORD` when the segment holds none.
    pub last_record_offset: u32,
    /// When it was sealed (ns since the Unix epoch).
    pub sealed_at_ns: u64,
    /// Reserved slot for a sparse index: its offset (zero in v1).
    pub index_offset: u64,
    /// Reserved: the sparse index's length (zero in v1).
    pub index_len: u32,
    /// Reserved: the sparse index's checksum (zero in v1).
    pub index_crc: u32,
    /// Sealed by a clean close as the log's last segment (flags bit 0): no record id
    /// past `data_end`, nor in any later segment, was handed out, so the next session
    /// may continue this segment instead of starting a new file. A seal at a roll or
    /// by recovery (after a crash, when ids past the last valid frame may have been
    /// handed out) leaves it clear.
    pub closed_cleanly: bool,
}

/// `last_record_offset` of a segment without records.
pub const NO_RECORD: u32 = u32::MAX;

/// Footer flags bit 0: see [`SegmentFooter::closed_cleanly`].
pub const FOOTER_FLAG_CLOSED_CLEANLY: u32 = 1;

impl SegmentFooter {
    /// Encodes the footer; its checksum is seeded with the segment seed.
    pub fn encode(&self, seed: u32) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(FOOTER_LEN as u16).to_le_bytes());
        let flags = if self.closed_cleanly {
            FOOTER_FLAG_CLOSED_CLEANLY
        } else {
            0
        };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.record_count.to_le_bytes());
        b[32..40].copy_from_slice(&self.data_end.to_le_bytes());
        b[40..44].copy_from_slice(&self.last_frame_crc.to_le_bytes());
        b[44..48].copy_from_slice(&self.last_record_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.sealed_at_ns.to_le_bytes());
        b[56..64].copy_from_slice(&self.index_offset.to_le_bytes());
        b[64..68].copy_from_slice(&self.index_len.to_le_bytes());
        b[68..72].copy_from_slice(&self.index_crc.to_le_bytes());
        // 72..76 reserved.
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(&b[0..76]);
        b[76..80].copy_from_slice(&h.finalize().to_le_bytes());
        b
    }

    /// Decodes the footer region's first bytes. `Ok(None)`: all zeros (not sealed).
    pub fn decode(
        b: &[u8],
        seed: u32,
        file_size: u64,
    ) -> Result<Option<SegmentFooter>, FormatError> {
        if b.len() < FOOTER_LEN {
            return Err(FormatError::Truncated {
                needed: FOOTER_LEN,
                have: b.len(),
            });
        }
        let b = &b[..FOOTER_LEN];
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b[0..8] != FOOTER_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let stored = u32_at(b, 76);
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(&b[0..76]);
        let computed = h.finalize();
        if stored != computed {
            return Err(FormatError::BadChecksum { stored, computed });
        }
        if u16_at(b, 10) as usize != FOOTER_LEN || u32_at(b, 72) != 0 {
            return Err(FormatError::BadField("reserved"));
        }
        let flags = u32_at(b, 12);
        if flags & !FOOTER_FLAG_CLOSED_CLEANLY != 0 {
            return Err(FormatError::BadField("flags"));
        }
        let f = SegmentFooter {
            segment_id: u64_at(b, 16),
            record_count: u64_at(b, 24),
            data_end: u64_at(b, 32),
            last_frame_crc: u32_at(b, 40),
            last_record_offset: u32_at(b, 44),
            sealed_at_ns: u64_at(b, 48),
            index_offset: u64_at(b, 56),
            index_len: u32_at(b, 64),
            index_crc: u32_at(b, 68),
            closed_cleanly: flags & FOOTER_FLAG_CLOSED_CLEANLY != 0,
        };
        if f.data_end < HEADER_LEN as u64
            || f.data_end > data_capacity(file_size)
            || !f.data_end.is_multiple_of(FRAME_ALIGN as u64)
        {
            return Err(FormatError::BadField("data_end"));
        }
        if f.last_record_offset != NO_RECORD && f.last_record_offset as u64 >= f.data_end {
            return Err(FormatError::BadField("last_record_offset"));
        }
        Ok(Some(f))
    }
}

// ---------------------------------------------------------------------------------------
// Scanning a segment's frames: `scan.rs`

mod scan;
pub use scan::*;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            version: SEGMENT_VERSION,
            segment_id: 7,
            generation: 0xdead_beef,
            base_record_index: 1234,
            created_at_ns: 1_700_000_000_000_000_000,
            file_size: 1 << 20,
            recycled: false,
        }
    }

    /// Builds a segment image with the given payloads; returns it and the frame offsets.
    fn image(payloads: &[Vec<u8>]) -> (Vec<u8>, u32, Vec<usize>) {
        let frames: Vec<(Vec<u8>, u8)> = payloads.iter().map(|p| (p.clone(), 0)).collect();
        flagged_image(&frames)
    }

    #[test]
    fn header_round_trips_and_blank_is_recognised() {
        let h = header();
        let (b, crc) = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(HeaderState::Valid(h, crc)));
        assert_eq!(SegmentHeader::decode(&[0u8; 64]), Ok(HeaderState::Blank));
        assert!(matches!(
            SegmentHeader::decode(&b[..10]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn newer_header_version_is_refused_by_name() {
        let (mut b, _) = header().encode();
        b[8..10].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(FormatError::UnsupportedVersion(3))
        );
        b[8..10].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(FormatError::UnsupportedVersion(0))
        );
        // Version 1 (no frame flags) is still read.
        let v1 = SegmentHeader {
            version: 1,
            ..header()
        };
        assert!(matches!(
            SegmentHeader::decode(&v1.encode().0),
            Ok(HeaderState::Valid(h, _)) if h.version == 1
        ));
    }

    #[test]
    fn every_flipped_header_bit_is_detected() {
        let (b, _) = header().encode();
        for bit in 0..HEADER_LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&c).is_err(), "bit {bit} undetected");
        }
    }

    #[test]
    fn footer_round_trips_and_every_flipped_bit_is_detected() {
        let f = SegmentFooter {
            segment_id: 7,
            record_count: 3,
            data_end: 4096,
            last_frame_crc: 99,
            last_record_offset: 1000,
            sealed_at_ns: 5,
            index_offset: 0,
            index_len: 0,
            index_crc: 0,
            closed_cleanly: false,
        };
        let clean = SegmentFooter {
            closed_cleanly: true,
            ..f
        };
        let c = clean.encode(1234);
        assert_eq!(SegmentFooter::decode(&c, 1234, 1 << 20), Ok(Some(clean)));
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 1);
        let b = f.encode(1234);
        assert_eq!(SegmentFooter::decode(&b, 1234, 1 << 20), Ok(Some(f)));
        assert_eq!(
            SegmentFooter::decode(&[0u8; FOOTER_LEN], 1234, 1 << 20),
            Ok(None)
        );
        // A footer from another segment (another seed) never validates.
        assert!(SegmentFooter::decode(&b, 1235, 1 << 20).is_err());
        for bit in 0..FOOTER_LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentFooter::decode(&c, 1234, 1 << 20).is_err(),
                "bit {bit} undetected"
            );
        }
    }

    #[test]
    fn zero_filled_space_is_never_a_frame() {
        let z = vec![0u8; 256];
        for seed in [0, 1, 0xffff_ffff] {
            assert_eq!(decode_frame(seed, &z), FrameDecode::Blank);
            assert_eq!(decode_frame(seed, &z[..5]), FrameDecode::Blank);
        }
    }

    #[test]
    fn empty_and_padding_frames_decode() {
        let (f, crc) = encode_frame(9, 9, FrameKind::Record, 64, 1, &[]);
        assert_eq!(f.len(), FRAME_HEADER_LEN);
        match decode_frame(9, &f) {
            FrameDecode::Frame(h) => {
                assert_eq!((h.len, h.crc, h.kind), (0, crc, FrameKind::Record));
            }
            other => panic!("{other:?}"),
        }
        let (p, _) = encode_frame(9, crc, FrameKind::Padding, 64, 0, &[0u8; 13]);
        assert_eq!(p.len(), 48);
        assert!(
            matches!(decode_frame(9, &p), FrameDecode::Frame(h) if h.kind == FrameKind::Padding)
        );
    }

    #[test]
    fn frame_from_another_segment_never_validates() {
        let (f, _) = encode_frame(100, 100, FrameKind::Record, 64, 1, b"payload");
        assert!(matches!(
            decode_frame(101, &f),
            FrameDecode::Invalid(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn scan_stops_at_blank_and_reports_chain() {
        let payloads: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; i * 7]).collect();
        let (img, seed, offs) = image(&payloads);
        let r = scan_frames(seed, &img, data_capacity(img.len() as u64));
        assert_eq!(r.stop, ScanStop::Blank);
        assert_eq!(r.record_count, 10);
        assert_eq!(r.last_record_offset as usize, *offs.last().unwrap());
        assert_eq!(r.data_end as usize, offs[9] + frame_size(63));
    }

    /// An image of frames with the given (payload, flags), each appended when
    /// everything before it was durable.
    fn flagged_image(frames: &[(Vec<u8>, u8)]) -> (Vec<u8>, u32, Vec<usize>) {
        let h = header();
        let (hb, seed) = h.encode();
        let mut img = vec![0u8; h.file_size as usize];
        img[..HEADER_LEN].copy_from_slice(&hb);
        let (mut off, mut prev, mut offs) = (HEADER_LEN, seed, vec![]);
        for (p, flags) in frames {
            let (f, crc) =
                encode_frame_with_flags(seed, prev, FrameKind::Record, *flags, off as u32, 42, p);
            img[off..off + f.len()].copy_from_slice(&f);
            offs.push(off);
            off += f.len();
            prev = crc;
        }
        (img, seed, offs)
    }

    #[test]
    fn a_scan_stops_before_a_batch_its_frames_end_inside() {
        let more = FRAME_FLAG_BATCH_MORE;
        let single = (b"single".to_vec(), 0);
        let done = [(vec![1; 10], more), (vec![2; 20], more), (vec![3; 30], 0)];
        let torn = [(vec![4; 40], more), (vec![5; 50], more)];
        // Complete batches count whole.
        let frames: Vec<_> = [single.clone()].into_iter().chain(done.clone()).collect();
        let (img, seed, offs) = flagged_image(&frames);
        let r = scan_frames(seed, &img, data_capacity(img.len() as u64));
        assert_eq!((r.record_count, r.torn_batch), (4, 0));
        assert_eq!(r.data_end, r.frames_end);
        assert_eq!(r.last_record_offset as usize, offs[3]);
        // A batch without its last record is left out, whatever ends the scan.
        let frames: Vec<_> = [single.clone()]
            .into_iter()
            .chain(done.clone())
            .chain(torn.clone())
            .collect();
        let (mut img, seed, offs) = flagged_image(&frames);
        let full = scan_frames(seed, &img, data_capacity(img.len() as u64));
        assert_eq!(full.stop, ScanStop::Blank);
        assert_eq!((full.record_count, full.torn_batch), (4, 2));
        assert_eq!(full.data_end as usize, offs[4]);
        assert_eq!(full.frames_end as usize, offs[5] + frame_size(50));
        assert_eq!(full.last_record_offset as usize, offs[3]);
        let crc3 = u32_at(&img[offs[3]..], 0);
        assert_eq!(
            full.last_crc, crc3,
            "the chain ends at the last complete batch"
        );
        // Torn inside its second frame: an invalid stop, same prefix.
        img[offs[5] + 40] ^= 1;
        let r = scan_frames(seed, &img, data_capacity(img.len() as u64));
        assert!(matches!(r.stop, ScanStop::Invalid { .. }));
        assert_eq!(
            (r.record_count, r.torn_batch, r.data_end),
            (4, 1, offs[4] as u64)
        );
    }

    #[test]
    fn frame_flags_are_checked() {
        let seed = 9;
        let (mut f, _) = encode_frame_with_flags(seed, seed, FrameKind::Record, 1, 64, 1, b"x");
        assert!(matches!(decode_frame(seed, &f), FrameDecode::Frame(h) if h.continues_batch()));
        // An unknown flag bit, and a flag on padding, are invalid (checksum fixed up).
        for (kind, flags) in [(FrameKind::Record, 2u8), (FrameKind::Padding, 1)] {
            (f, _) = encode_frame_with_flags(seed, seed, kind, flags, 64, 1, b"x");
            assert_eq!(
                decode_frame(seed, &f),
                FrameDecode::Invalid(FormatError::BadField("flags"))
            );
        }
    }

    #[test]
    fn swapped_frames_break_the_chain() {
        let payloads = vec![b"aaaaaaaa".to_vec(), b"bbbbbbbb".to_vec()];
        let (mut img, seed, offs) = image(&payloads);
        let (a, b) = (offs[0], offs[1]);
        let n = b - a;
        let fa = img[a..b].to_vec();
        let fb = img[b..b + n].to_vec();
        img[a..b].copy_from_slice(&fb);
        img[b..b + n].copy_from_slice(&fa);
        let r = scan_frames(seed, &img, data_capacity(img.len() as u64));
        assert!(matches!(r.stop, ScanStop::Invalid { offset, .. } if offset == a as u64));
    }

    #[test]
    fn corruption_is_proven_only_by_a_later_frame_synced_past_it() {
        let payloads: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8 + 1; 40]).collect();
        let (mut img, seed, offs) = image(&payloads);
        // Frames were built with synced_before = their own offset: each later frame
        // claims everything before it was durable, so damage to frame 2 is corruption.
        img[offs[2] + 40] ^= 0x10;
        let r = scan_frames(seed, &img, data_capacity(img.len() as u64));
        let ScanStop::Invalid { offset, .. } = r.stop else {
            panic!("{:?}", r.stop)
        };
        assert_eq!(offset as usize, offs[2]);
        assert_eq!(
            find_frame_proving_corruption(seed, &img, offset, img.len() as u64),
            Some(offs[3] as u64)
        );
        // Damage to the last frame is indistinguishable from a torn write.
        let (mut img, seed, offs) = image(&payloads);
        img[offs[5] + 40] ^= 0x10;
        assert_eq!(
            find_frame_proving_corruption(seed, &img, offs[5] as u64, img.len() as u64),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn frames_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let (img, seed, offs) = image(&payloads);
            let r = scan_frames(seed, &img, data_capacity(img.len() as u64));
            prop_assert_eq!(r.record_count as usize, payloads.len());
            for (p, &o) in payloads.iter().zip(&offs) {
                match decode_frame(seed, &img[o..]) {
                    FrameDecode::Frame(h) => {
                        prop_assert_eq!(h.len as usize, p.len());
                        prop_assert_eq!(&img[o + FRAME_HEADER_LEN..o + FRAME_HEADER_LEN + p.len()], &p[..]);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }

        #[test]
        fn any_flipped_bit_in_a_frame_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..200), bit in any::<usize>()) {
            let (f, _) = encode_frame(77, 5, FrameKind::Record, 64, 3, &payload);
            let bit = bit % (f.len() * 8);
            let mut c = f.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            // The checksum covers every byte after itself, prev_crc and padding included.
            prop_assert!(matches!(decode_frame(77, &c), FrameDecode::Invalid(_)), "bit {} undetected", bit);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), seed in any::<u32>()) {
            let _ = SegmentHeader::decode(&bytes);
            let _ = SegmentFooter::decode(&bytes, seed, bytes.len() as u64);
            let _ = decode_frame(seed, &bytes);
            let r = scan_frames(seed, &bytes, bytes.len() as u64 + 100);
            prop_assert!(r.data_end as usize <= bytes.len().max(HEADER_LEN));
            let _ = find_frame_proving_corruption(seed, &bytes, 0, bytes.len() as u64);
        }

        #[test]
        fn arbitrary_frame_shaped_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 32..512), kind in 1u8..3, len in any::<u32>()) {
            bytes[8] = kind;
            bytes[9..12].fill(0);
            bytes[12..16].copy_from_slice(&len.to_le_bytes());
            bytes[20..24].fill(0);
            prop_assert!(!matches!(decode_frame(1, &bytes), FrameDecode::Blank));
        }
    }
}
