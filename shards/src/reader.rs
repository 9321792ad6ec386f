//! Reading one segment: [`SegmentReader`] reads a record by id (O(1): the id holds the
//! frame's offset) and [`SegmentCursor`] walks the frames in order. Sealed segments are
//! memory-mapped and payloads borrow the mapping (no copy); an unsealed segment is read
//! with `pread` up to the durable end captured when the reader was opened, never
//! mapped. A compressed sealed segment (`.zst`, see `compressed_format.rs`) is mapped
//! and read one inflated chunk at a time. Every read checks the frame's checksum; a
//! cursor also checks the chain of checksums from frame to frame, so a dropped,
//! duplicated or stale frame is an error.

use crate::chunk_cache::ChunkCache;
use crate::compressed_format::{
    chunk_index, inflate_chunk_into, Chunk, CompressedIndex, CompressedSegment,
};
use crate::config::RecordId;
use crate::error::{AofError, AofResult};
use crate::format::{
    self, FrameDecode, FrameHeader, FrameKind, SegmentHeader, FRAME_ALIGN, FRAME_HEADER_LEN,
    HEADER_LEN,
};
use crate::fs::{read_exact_at, Fs, FsFile, Mapping, OpenMode};
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
    Mapped(Arc<Mapping>),
    Pread(Arc<dyn FsFile>),
    /// A compressed file's mapping and its (checked) index.
    Compressed(Arc<Mapping>, Arc<CompressedIndex>),
}

/// A reader over one segment.
pub struct SegmentReader {
    path: PathBuf,
    header: SegmentHeader,
    seed: u32,
    /// Frames are readable in [HEADER_LEN, data_end).
    data_end: u64,
    /// Record count from the seal footer (sealed segments only).
    record_count: Option<u64>,
    sealed: bool,
    source: Source,
    /// Keeps the segment's file from being reused while this reader lives (the log's
    /// readers only; the tools read without one).
    _pin: Option<Arc<crate::log::SegmentPin>>,
    /// Where `read_record` of a compressed segment finds inflated chunks (Tier 0),
    /// with the log's key.
    cache: Option<(Arc<ChunkCache>, u64)>,
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
    /// Maps a sealed segment, checking the file is as long as its header says.
    pub(crate) fn map_sealed(fs: &dyn Fs, path: &Path, s: &SealedSegment) -> AofResult<Mapping> {
        let file = fs
            .open(path, OpenMode::Read)
            .map_err(|e| AofError::io("open", path, e))?;
        let map = file.map().map_err(|e| AofError::io("map", path, e))?;
        if (map.len() as u64) < s.header.file_size {
            return Err(AofError::Corruption {
                path: path.to_path_buf(),
                segment: s.header.segment_id,
                offset: map.len() as u64,
                reason: format!(
                    "file is shorter than the {} bytes its header states",
                    s.header.file_size
                ),
            });
        }
        Ok(map)
    }

    pub(crate) fn sealed(fs: &dyn Fs, path: PathBuf, s: SealedSegment) -> AofResult<SegmentReader> {
        let map = Self::map_sealed(fs, &path, &s)?;
        Ok(Self::sealed_mapped(path, s, Arc::new(map)))
    }

    /// A reader over a sealed segment already mapped (the mapping may be shared).
    pub(crate) fn sealed_mapped(
        path: PathBuf,
        s: SealedSegment,
        map: Arc<Mapping>,
    ) -> SegmentReader {
        READERS_OPENED.fetch_add(1, Ordering::Relaxed);
        SegmentReader {
            path,
            header: s.header,
            seed: s.seed,
            data_end: s.footer.data_end,
            record_count: Some(s.footer.record_count),
            sealed: true,
            source: Source::Mapped(map),
            _pin: None,
            cache: None,
        }
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
            record_count: None,
            sealed: false,
            source: Source::Pread(file),
            _pin: None,
            cache: None,
        })
    }

    /// A reader over a compressed sealed segment file (`.zst`): its trailer, index,
    /// header and footer are checked now, each chunk when it is inflated.
    pub fn compressed(fs: &dyn Fs, path: PathBuf) -> AofResult<SegmentReader> {
        let (map, index) = Self::open_compressed(fs, &path)?;
        Ok(Self::compressed_from(path, Arc::new(map), Arc::new(index)))
    }

    /// Maps and checks a compressed segment file: its mapping and index.
    pub(crate) fn open_compressed(
        fs: &dyn Fs,
        path: &Path,
    ) -> AofResult<(Mapping, CompressedIndex)> {
        let file = fs
            .open(path, OpenMode::Read)
            .map_err(|e| AofError::io("open", path, e))?;
        let map = file.map().map_err(|e| AofError::io("map", path, e))?;
        let index = CompressedSegment::parse_at(&map)
            .map_err(|(offset, e)| AofError::Corruption {
                path: path.to_path_buf(),
                // The header may be what failed: the id from the file's name.
                segment: path
                    .file_name()
                    .and_then(|n| n.to_str()?.get(..20)?.parse().ok())
                    .unwrap_or(0),
                offset,
                reason: format!("compressed segment: {e}"),
            })?
            .into_index();
        Ok((map, index))
    }

    /// A reader over a compressed segment mapped and checked already.
    pub(crate) fn compressed_from(
        path: PathBuf,
        map: Arc<Mapping>,
        index: Arc<CompressedIndex>,
    ) -> SegmentReader {
        READERS_OPENED.fetch_add(1, Ordering::Relaxed);
        SegmentReader {
            path,
            header: index.header,
            seed: index.seed,
            data_end: index.footer.data_end,
            record_count: Some(index.footer.record_count),
            sealed: true,
            source: Source::Compressed(map, index),
            _pin: None,
            cache: None,
        }
    }

    /// Inflates the chunk of a compressed segment holding raw offset `off` into `buf`:
    /// (its raw start, its bytes). A chunk that fails its checks is `Corruption`
    /// naming its offset.
    fn inflate_into(
        &self,
        map: &Mapping,
        chunks: &[Chunk],
        off: u64,
        mut buf: Vec<u8>,
    ) -> AofResult<(u64, Vec<u8>)> {
        let c = chunk_index(chunks, off)
            .map(|i| &chunks[i])
            .ok_or_else(|| self.corrupt(off, "no compressed chunk holds this offset".into()))?;
        inflate_chunk_into(map, c, &mut buf).map_err(|e| {
            self.corrupt(
                c.raw_start,
                format!("compressed chunk at {}: {e}", c.comp_off),
            )
        })?;
        Ok((c.raw_start, buf))
    }

    /// `read_record` finds inflated chunks of a compressed segment in `cache` (log
    /// `key`'s entries) and leaves them there; cursors inflate their own.
    pub(crate) fn cached(mut self, cache: Arc<ChunkCache>, key: u64) -> SegmentReader {
        self.cache = Some((cache, key));
        self
    }

    /// The chunk holding raw offset `off`, from the cache if there is one: (its raw
    /// start, its bytes).
    fn chunk_at(
        &self,
        map: &Mapping,
        chunks: &[Chunk],
        off: u64,
    ) -> AofResult<(u64, Arc<Vec<u8>>)> {
        let Some((cache, log)) = &self.cache else {
            let (start, bytes) = self.inflate_into(map, chunks, off, Vec::new())?;
            return Ok((start, Arc::new(bytes)));
        };
        let start = chunk_index(chunks, off).map_or(off, |i| chunks[i].raw_start);
        let key = (*log, self.header.segment_id, start);
        let bytes = cache.get_or_inflate(key, |buf| {
            self.inflate_into(map, chunks, off, buf).map(|r| r.1)
        })?;
        Ok((start, bytes))
    }

    /// This reader holds `pin`: its segment's file is not reused while it lives.
    pub(crate) fn pinned(mut self, pin: Arc<crate::log::SegmentPin>) -> SegmentReader {
        self._pin = Some(pin);
        self
    }

    /// The segment's id.
    pub fn segment_id(&self) -> crate::config::SegmentId {
        crate::config::SegmentId::new(self.header.segment_id)
    }

    /// True for a sealed (immutable) segment.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// End of the readable frames: the sealed data end, or for an unsealed segment the
    /// durable end when the reader was opened.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// Records in a sealed segment (from its footer); `None` for an unsealed one.
    pub fn record_count(&self) -> Option<u64> {
        self.record_count
    }

    /// The segment's header.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
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
        let off = self.check_rid(rid)?;
        let frame: Cow<'_, [u8]> = match &self.source {
            Source::Mapped(m) => Cow::Borrowed(&m[off as usize..self.data_end as usize]),
            Source::Compressed(m, index) => {
                let chunks = &index.chunks;
                let (start, raw) = self.chunk_at(m, chunks, off)?;
                let at = ((off - start) as usize).min(raw.len());
                // Just the frame (its length from its header; checked when decoded).
                let len = raw
                    .get(at + 12..at + 16)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                let end = at
                    .saturating_add(format::frame_size(len as usize))
                    .min(raw.len());
                Cow::Owned(raw[at..end].to_vec())
            }
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
            FrameDecode::Blank => return Err(not_found(rid, format!("no frame at offset {off}"))),
            FrameDecode::Invalid(e) => return Err(self.corrupt(off, e.to_string())),
        };
        if h.kind != FrameKind::Record {
            return Err(not_found(
                rid,
                format!("offset {off} holds a padding frame"),
            ));
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

    /// The offset `rid` points at, if it can hold a frame of this segment.
    fn check_rid(&self, rid: RecordId) -> AofResult<u64> {
        if rid.segment_index() as u64 != self.header.segment_id {
            return Err(not_found(
                rid,
                format!("this reader reads segment {}", self.header.segment_id),
            ));
        }
        let off = rid.segment_offset() as u64;
        if off < HEADER_LEN as u64
            || off + FRAME_HEADER_LEN as u64 > self.data_end
            || !off.is_multiple_of(FRAME_ALIGN as u64)
        {
            return Err(not_found(
                rid,
                format!(
                    "offset {off} is not a frame offset in the readable frames [{HEADER_LEN}, {}) of {}",
                    self.data_end,
                    self.path.display()
                ),
            ));
        }
        Ok(off)
    }
}

fn not_found(rid: RecordId, reason: String) -> AofError {
    AofError::RecordNotFound {
        rid: rid.to_string(),
        reason,
    }
}

/// Bytes read per `pread` when a cursor walks an unsealed segment.
const READ_CHUNK: usize = 1 << 20;

/// Walks the records of one segment in order (a lending cursor: each record borrows
/// the cursor until the next call). Sealed segments are read from the mapping with no
/// copy; an unsealed one through a 1 MiB `pread` window.
///
/// Every frame's checksum and its link to the frame before are checked: a frame that
/// fails is an [`AofError::Corruption`] naming segment, offset and path, and the cursor
/// stops there (later calls return the same error) rather than skipping it.
pub struct SegmentCursor {
    reader: SegmentReader,
    /// Offset of the next frame.
    off: u64,
    /// The `prev_crc` the next frame must carry; `None` right after a seek (the frame
    /// sought was validated on its own).
    prev: Option<u32>,
    window: Vec<u8>,
    window_start: u64,
    /// Where and why the chain broke (the cursor stops there).
    failed: Option<(u64, String)>,
    /// Published after every frame consumed (a stream resumes from it).
    progress: Option<Arc<AtomicU64>>,
    /// Scanning a segment another process may be writing: a zero header ends the
    /// frames (rather than being an error), and nothing read past it is kept.
    open_ended: bool,
}

impl SegmentCursor {
    /// A cursor at the first record of the reader's segment.
    pub fn new(reader: SegmentReader) -> SegmentCursor {
        SegmentCursor {
            reader,
            off: HEADER_LEN as u64,
            prev: None,
            window: Vec::new(),
            window_start: 0,
            failed: None,
            progress: None,
            open_ended: false,
        }
    }

    /// A cursor over a segment whose written end is not known (read without the
    /// writer's lock): frames are read until a zero header, and a later call reads
    /// again from there. A frame that fails its checksum is still an error; the
    /// caller decides whether it is a write in progress.
    pub(crate) fn open_ended(reader: SegmentReader) -> SegmentCursor {
        let mut c = SegmentCursor::new(reader);
        c.open_ended = true;
        c
    }

    /// A cursor whose position is published to `progress` (as `RecordId::as_u64` of the
    /// next frame) after every frame it consumes.
    pub(crate) fn with_progress(
        reader: SegmentReader,
        start: u64,
        progress: Arc<AtomicU64>,
    ) -> AofResult<SegmentCursor> {
        let mut c = SegmentCursor::new(reader);
        c.progress = Some(progress);
        if start > HEADER_LEN as u64 {
            c.seek_offset(start)?;
        }
        Ok(c)
    }

    /// The reader this cursor reads.
    pub fn reader(&self) -> &SegmentReader {
        &self.reader
    }

    /// The id the next record would have (where the cursor stands).
    pub fn position(&self) -> RecordId {
        RecordId::from_parts(self.reader.header.segment_id as u32, self.off as u32)
    }

    /// True once every frame up to the reader's data end was read.
    pub fn is_finished(&self) -> bool {
        self.off >= self.reader.data_end
    }

    /// Positions the cursor so the next record returned is `rid`. Errors (and leaves
    /// the cursor where it was) if `rid` is not the id of a frame in this segment.
    pub fn seek(&mut self, rid: RecordId) -> AofResult<()> {
        let off = self.reader.check_rid(rid)?;
        self.seek_offset(off).map_err(|e| match e {
            AofError::Corruption { reason, .. } => not_found(rid, reason),
            e => e,
        })
    }

    /// Positions the cursor just after record `rid`.
    pub fn seek_after(&mut self, rid: RecordId) -> AofResult<()> {
        self.seek(rid)?;
        let (crc, size) = {
            let (h, _) = self.frame_at(self.off)?;
            (h.crc, h.size() as u64)
        };
        self.advance(size, crc);
        Ok(())
    }

    fn seek_offset(&mut self, off: u64) -> AofResult<()> {
        if off >= self.reader.data_end {
            self.off = self.reader.data_end;
            self.prev = None;
            self.failed = None;
            return Ok(());
        }
        self.frame_at(off)?;
        self.off = off;
        self.prev = None;
        self.failed = None;
        Ok(())
    }

    fn advance(&mut self, size: u64, crc: u32) {
        self.off += size;
        self.prev = Some(crc);
        if let Some(p) = &self.progress {
            p.store(self.position().as_u64(), Ordering::Release);
        }
    }

    /// Makes [off, off + len) (clipped to the data end) readable and returns it.
    fn bytes(&mut self, off: u64, len: usize) -> AofResult<&[u8]> {
        let end = (off + len as u64).min(self.reader.data_end);
        match &self.reader.source {
            Source::Mapped(m) => Ok(&m[off as usize..end as usize]),
            Source::Compressed(m, index) => {
                let chunks = &index.chunks;
                // Chunks hold whole frames: the window is the chunk holding `off`.
                let have = self.window_start + self.window.len() as u64;
                if off < self.window_start || end > have {
                    let buf = std::mem::take(&mut self.window);
                    let (start, raw) = self.reader.inflate_into(m, chunks, off, buf)?;
                    self.window = raw;
                    self.window_start = start;
                }
                let a = (off - self.window_start) as usize;
                let b = ((end - self.window_start) as usize).min(self.window.len());
                Ok(&self.window[a..b])
            }
            Source::Pread(f) => {
                let have = self.window_start + self.window.len() as u64;
                if off < self.window_start || end > have {
                    let want = (end - off).max(READ_CHUNK as u64);
                    let to = (off + want).min(self.reader.data_end);
                    self.window.resize((to - off) as usize, 0);
                    read_exact_at(&**f, off, &mut self.window)
                        .map_err(|e| AofError::io("read", &self.reader.path, e))?;
                    self.window_start = off;
                }
                let a = (off - self.window_start) as usize;
                Ok(&self.window[a..a + (end - off) as usize])
            }
        }
    }

    /// Decodes and checks the frame at `off`; returns its header and the payload's
    /// offset.
    fn frame_at(&mut self, off: u64) -> AofResult<(FrameHeader, u64)> {
        let seed = self.reader.seed;
        let head = self.bytes(off, FRAME_HEADER_LEN)?;
        let size = if head.len() == FRAME_HEADER_LEN {
            let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
            format::frame_size(len as usize)
        } else {
            head.len()
        };
        let data_end = self.reader.data_end;
        let b = self.bytes(off, size)?;
        match format::decode_frame(seed, b) {
            FrameDecode::Frame(h) => Ok((h, off + FRAME_HEADER_LEN as u64)),
            FrameDecode::Blank => Err(self.reader.corrupt(
                off,
                format!("zeros where a frame should be (frames were written up to {data_end})"),
            )),
            FrameDecode::Invalid(e) => Err(self.reader.corrupt(off, e.to_string())),
        }
    }

    /// The next record, `Ok(None)` at the end of the readable frames. Padding frames
    /// are skipped.
    #[allow(clippy::should_implement_trait)] // a lending cursor cannot be an Iterator
    pub fn next(&mut self) -> AofResult<Option<SegmentRecord<'_>>> {
        if let Some((off, reason)) = &self.failed {
            return Err(self.reader.corrupt(*off, reason.clone()));
        }
        loop {
            if self.off >= self.reader.data_end {
                return Ok(None);
            }
            let off = self.off;
            if self.open_ended {
                let head = self.bytes(off, FRAME_HEADER_LEN)?;
                if head.iter().all(|&b| b == 0) {
                    // Not written yet: read it afresh next time.
                    self.window.clear();
                    return Ok(None);
                }
            }
            let (h, payload_at) = match self.frame_at(off) {
                Ok(x) => x,
                // A recycled file's stale bytes end the written frames, as zeros do.
                Err(AofError::Corruption { .. })
                    if self.open_ended && self.reader.header().recycled =>
                {
                    self.window.clear();
                    return Ok(None);
                }
                Err(e) if self.open_ended => {
                    self.window.clear();
                    return Err(e);
                }
                Err(e) => {
                    if let AofError::Corruption { offset, reason, .. } = &e {
                        self.failed = Some((*offset, reason.clone()));
                    }
                    return Err(e);
                }
            };
            if let Some(prev) = self.prev {
                if h.prev_crc != prev {
                    let reason = format!(
                        "chain broken: prev_crc {:#010x}, previous frame {prev:#010x}",
                        h.prev_crc
                    );
                    if self.open_ended {
                        self.window.clear();
                    } else {
                        self.failed = Some((off, reason.clone()));
                    }
                    return Err(self.reader.corrupt(off, reason));
                }
            }
            self.advance(h.size() as u64, h.crc);
            if h.kind != FrameKind::Record {
                continue;
            }
            let rid = RecordId::from_parts(self.reader.header.segment_id as u32, off as u32);
            let payload = self.bytes(payload_at, h.len as usize)?;
            return Ok(Some(SegmentRecord {
                rid,
                timestamp_ns: h.timestamp_ns,
                payload: Cow::Borrowed(payload),
            }));
        }
    }
}

impl std::fmt::Debug for SegmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentReader")
            .field("path", &self.path)
            .field("segment", &self.header.segment_id)
            .field("sealed", &self.sealed)
            .field("data_end", &self.data_end)
            .field("record_count", &self.record_count)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SegmentCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCursor")
            .field("reader", &self.reader)
            .field("offset", &self.off)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}
