//! Reading records of one segment by id. Sealed segments are memory-mapped and
//! payloads borrow the mapping (no copy); an unsealed segment is read with `pread` up
//! to the durable end captured when the reader was opened, never mapped. Every read
//! checks the frame's checksum.

use crate::backend::{read_exact_at, Fs, FsFile, Mapping, OpenMode};
use crate::config::RecordId;
use crate::error::{AofError, AofResult};
use crate::format::{self, FrameDecode, FrameKind, SegmentHeader, FRAME_HEADER_LEN, HEADER_LEN};
use crate::log::SealedSegment;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static READERS_OPENED: AtomicU64 = AtomicU64::new(0);

/// How many segment readers this process has opened successfully (lets a test prove a
/// reader opened inside code it may not change).
#[doc(hidden)]
pub fn readers_opened() -> u64 {
    READERS_OPENED.load(Ordering::Relaxed)
}

enum Source {
    Mapped(Mapping),
    Pread(Arc<dyn FsFile>),
}

/// A reader over one segment.
pub struct SegmentReader {
    path: PathBuf,
    header: SegmentHeader,
    seed: u32,
    /// Frames are readable in [HEADER_LEN, data_end).
    data_end: u64,
    sealed: bool,
    source: Source,
}

/// One record read from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord<'a> {
    rid: RecordId,
    timestamp_ns: u64,
    payload: Cow<'a, [u8]>,
}

impl SegmentRecord<'_> {
    /// The record's id.
    pub fn record_id(&self) -> RecordId {
        self.rid
    }
    /// When it was appended (ns since the Unix epoch; never decreasing within a log).
    pub fn timestamp(&self) -> u64 {
        self.timestamp_ns
    }
    /// The bytes appended.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl SegmentReader {
    pub(crate) fn sealed(fs: &dyn Fs, path: PathBuf, s: SealedSegment) -> AofResult<SegmentReader> {
        let file = fs
            .open(&path, OpenMode::Read)
            .map_err(|e| AofError::io("open", &path, e))?;
        let map = file.map().map_err(|e| AofError::io("map", &path, e))?;
        if (map.len() as u64) < s.header.file_size {
            return Err(AofError::Corruption {
                path,
                segment: s.header.segment_id,
                offset: map.len() as u64,
                reason: format!(
                    "file is shorter than the {} bytes its header states",
                    s.header.file_size
                ),
            });
        }
        READERS_OPENED.fetch_add(1, Ordering::Relaxed);
        Ok(SegmentReader {
            path,
            header: s.header,
            seed: s.seed,
            data_end: s.footer.data_end,
            sealed: true,
            source: Source::Mapped(map),
        })
    }

    pub(crate) fn unsealed(
        fs: &dyn Fs,
        path: PathBuf,
        header: SegmentHeader,
        seed: u32,
        durable_end: u64,
    ) -> AofResult<SegmentReader> {
        let file = fs
            .open(&path, OpenMode::Read)
            .map_err(|e| AofError::io("open", &path, e))?;
        READERS_OPENED.fetch_add(1, Ordering::Relaxed);
        Ok(SegmentReader {
            path,
            header,
            seed,
            data_end: durable_end,
            sealed: false,
            source: Source::Pread(file),
        })
    }

    /// The segment's id.
    pub fn segment_id(&self) -> crate::config::SegmentId {
        crate::config::SegmentId::new(self.header.segment_id)
    }

    /// True for a sealed (immutable) segment.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// End of the readable frames.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, offset: u64, reason: String) -> AofError {
        AofError::Corruption {
            path: self.path.clone(),
            segment: self.header.segment_id,
            offset,
            reason,
        }
    }

    /// Reads the record `rid` (O(1): the id holds the frame's offset).
    pub fn read_record(&self, rid: RecordId) -> AofResult<SegmentRecord<'_>> {
        let not_found = |reason: String| AofError::RecordNotFound {
            rid: rid.to_string(),
            reason,
        };
        if rid.segment_index() as u64 != self.header.segment_id {
            return Err(not_found(format!(
                "this reader reads segment {}",
                self.header.segment_id
            )));
        }
        let off = rid.segment_offset() as u64;
        if off < HEADER_LEN as u64 || off + FRAME_HEADER_LEN as u64 > self.data_end {
            return Err(not_found(format!(
                "offset {off} is outside the readable frames [{HEADER_LEN}, {}) of {}",
                self.data_end,
                self.path.display()
            )));
        }
        let frame: Cow<'_, [u8]> = match &self.source {
            Source::Mapped(m) => Cow::Borrowed(&m[off as usize..self.data_end as usize]),
            Source::Pread(f) => {
                let mut head = [0u8; FRAME_HEADER_LEN];
                read_exact_at(&**f, off, &mut head)
                    .map_err(|e| AofError::io("read", &self.path, e))?;
                let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as u64;
                let size = (format::frame_size(len as usize) as u64).min(self.data_end - off);
                let mut buf = vec![0u8; size as usize];
                read_exact_at(&**f, off, &mut buf)
                    .map_err(|e| AofError::io("read", &self.path, e))?;
                Cow::Owned(buf)
            }
        };
        let h = match format::decode_frame(self.seed, &frame) {
            FrameDecode::Frame(h) => h,
            FrameDecode::Blank => return Err(not_found(format!("no frame at offset {off}"))),
            FrameDecode::Invalid(e) => return Err(self.corrupt(off, e.to_string())),
        };
        if h.kind != FrameKind::Record {
            return Err(not_found(format!("offset {off} holds a padding frame")));
        }
        let (a, b) = (FRAME_HEADER_LEN, FRAME_HEADER_LEN + h.len as usize);
        let payload = match frame {
            Cow::Borrowed(f) => Cow::Borrowed(&f[a..b]),
            Cow::Owned(mut v) => {
                v.truncate(b);
                v.drain(..a);
                Cow::Owned(v)
            }
        };
        Ok(SegmentRecord {
            rid,
            timestamp_ns: h.timestamp_ns,
            payload,
        })
    }
}
