//! Scanning a segment's frames: the chain iterator, the summary of a valid prefix (a
//! torn batch left out), and telling a torn tail from damaged synced data.

use super::*;

/// Why a frame scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Reached the requested end exactly.
    Limit,
    /// A zero header: nothing was written from here on.
    Blank,
    /// The bytes at `offset` are not a valid frame continuing the chain.
    Invalid {
        /// Where the invalid bytes start.
        offset: u64,
        /// What is wrong with them.
        reason: String,
    },
}

/// The valid prefix of a segment's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// End of the last valid frame.
    pub data_end: u64,
    /// Record frames in the valid prefix.
    pub record_count: u64,
    /// `crc` of the last valid frame, or the seed.
    pub last_crc: u32,
    /// Offset of the last valid record frame (`NO_RECORD` if none).
    pub last_record_offset: u32,
    /// Timestamp of that record (0 if none).
    pub last_timestamp_ns: u64,
    /// Why the scan stopped.
    pub stop: ScanStop,
    /// End of the last valid frame, a torn batch's included (`data_end` otherwise).
    pub frames_end: u64,
    /// Records of a batch the valid frames end inside, left out of the prefix.
    pub torn_batch: u64,
}

/// One frame of a segment image, as yielded by [`Frames`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// Its fixed fields.
    pub header: FrameHeader,
    /// Its payload.
    pub payload: &'a [u8],
}

/// Iterates the frame chain of a segment image from `HEADER_LEN` to `limit`, checking
/// every checksum and chain link. Ends at `limit` or a blank header; yields one `Err`
/// (with the offset) at the first invalid frame, then ends.
pub struct Frames<'a> {
    seed: u32,
    image: &'a [u8],
    limit: usize,
    off: usize,
    prev: u32,
    stop: Option<ScanStop>,
}

/// See [`Frames`]. `image` is the file from offset 0; bytes past its end count as absent.
pub fn frames(seed: u32, image: &[u8], limit: u64) -> Frames<'_> {
    Frames {
        seed,
        image,
        limit: (limit as usize).min(image.len()),
        off: HEADER_LEN,
        prev: seed,
        stop: None,
    }
}

impl<'a> Frames<'a> {
    /// Why iteration ended (`None` while it has not).
    pub fn stop(&self) -> Option<&ScanStop> {
        self.stop.as_ref()
    }
    /// End of the last valid frame so far.
    pub fn position(&self) -> u64 {
        self.off as u64
    }
    /// `crc` of the last valid frame so far (the seed before the first).
    pub fn last_crc(&self) -> u32 {
        self.prev
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<FrameRef<'a>, (u64, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.stop.is_some() {
            return None;
        }
        if self.off >= self.limit {
            self.stop = Some(ScanStop::Limit);
            return None;
        }
        let off = self.off;
        let invalid = |this: &mut Self, reason: String| {
            this.stop = Some(ScanStop::Invalid {
                offset: off as u64,
                reason: reason.clone(),
            });
            Some(Err((off as u64, reason)))
        };
        match decode_frame(self.seed, &self.image[off..self.limit]) {
            FrameDecode::Blank => {
                self.stop = Some(ScanStop::Blank);
                None
            }
            FrameDecode::Invalid(e) => invalid(self, e.to_string()),
            FrameDecode::Frame(h) if h.prev_crc != self.prev => invalid(
                self,
                format!(
                    "chain broken: prev_crc {:#010x}, previous frame {:#010x}",
                    h.prev_crc, self.prev
                ),
            ),
            FrameDecode::Frame(h) => {
                self.prev = h.crc;
                self.off += h.size();
                let p = off + FRAME_HEADER_LEN;
                Some(Ok(FrameRef {
                    offset: off as u64,
                    header: h,
                    payload: &self.image[p..p + h.len as usize],
                }))
            }
        }
    }
}

/// Walks the frame chain of a segment image from `HEADER_LEN` up to `limit` (the footer's
/// `data_end`, or the data capacity of an unsealed segment) and summarises the valid prefix.
/// A batch the valid frames end inside (its last record still says more follow) was
/// never completed: the prefix stops at its first record, and `torn_batch` counts them.
pub fn scan_frames(seed: u32, image: &[u8], limit: u64) -> ScanResult {
    let mut r = ScanResult {
        data_end: HEADER_LEN as u64,
        record_count: 0,
        last_crc: seed,
        last_record_offset: NO_RECORD,
        last_timestamp_ns: 0,
        stop: ScanStop::Limit,
        frames_end: HEADER_LEN as u64,
        torn_batch: 0,
    };
    // The summary as it was before the open batch's first record, while one is open.
    let mut before_batch: Option<ScanResult> = None;
    let mut it = frames(seed, image, limit);
    for f in it.by_ref() {
        let Ok(f) = f else { break };
        if f.header.kind == FrameKind::Record {
            if f.header.continues_batch() && before_batch.is_none() {
                r.data_end = f.offset;
                r.last_crc = f.header.prev_crc;
                before_batch = Some(r.clone());
            }
            r.record_count += 1;
            r.last_record_offset = f.offset as u32;
            r.last_timestamp_ns = f.header.timestamp_ns;
            if !f.header.continues_batch() {
                before_batch = None;
            }
        }
    }
    let stop = it.stop().cloned().unwrap_or(ScanStop::Limit);
    let frames_end = it.position();
    if let Some(b) = before_batch {
        let torn = r.record_count - b.record_count;
        r = b;
        r.torn_batch = torn;
    } else {
        r.data_end = frames_end;
        r.last_crc = it.last_crc();
    }
    r.frames_end = frames_end;
    r.stop = stop;
    r
}

/// After a scan stopped at `bad` in an unsealed segment, looks for a frame past it that
/// validates on its own and was appended when `bad` was already durable. Such a frame
/// proves the bytes at `bad` were synced and later damaged (corruption), rather than a
/// write torn by a crash. Returns that frame's offset.
pub fn find_frame_proving_corruption(seed: u32, image: &[u8], bad: u64, limit: u64) -> Option<u64> {
    let limit = (limit as usize).min(image.len());
    let mut off = align_frame(bad as usize + 1);
    while off + FRAME_HEADER_LEN <= limit {
        // Zero blocks are the common case after a torn tail: skip them quickly.
        if off.is_multiple_of(BLOCK)
            && off + BLOCK <= limit
            && image[off..off + BLOCK].iter().all(|&x| x == 0)
        {
            off += BLOCK;
            continue;
        }
        let kind = image[off + 8];
        if kind == FrameKind::Record as u8 || kind == FrameKind::Padding as u8 {
            if let FrameDecode::Frame(h) = decode_frame(seed, &image[off..limit]) {
                if h.synced_before as u64 > bad {
                    return Some(off as u64);
                }
            }
        }
        off += FRAME_ALIGN;
    }
    None
}
