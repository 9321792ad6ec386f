//! Read-only inspection of a log directory for the command-line tools (`aof2 stat`,
//! `verify`, `dump`, `tail`). Nothing here takes the writer's lock or changes a file,
//! so it can run beside a live writer in another process: an unsealed segment is read
//! with `pread` (never mapped, since the writer may be rewriting its last block), and
//! a damaged frame at its end may be a write in progress rather than corruption.
//!
//! **No false alarms beside a live writer.** A writer that rolls seals a segment,
//! writes the next one's header and prepares another file while a tool reads: what
//! the tool read a moment ago can look inconsistent with what it reads now (a footer
//! that appeared, a header written after the listing). So a problem is reported only
//! once it is seen again, the same, in a fresh look at the directory (a race never
//! repeats itself exactly: the writer has moved on); a segment sealed under the tool
//! is re-read as sealed; and a segment a live writer is appending to (its lock is
//! held, as `/proc/locks` tells) is reported as being written, checked up to its last
//! complete frame.

mod archived;
mod checks;
use crate::archive::store::ArchiveBackend;
use crate::archive::stub::Stub;
use crate::error::{AofError, AofResult};
use crate::format::{self, ScanStop, SegmentFooter, FOOTER_REGION, HEADER_LEN};
use crate::fs::posix::PosixFs;
use crate::fs::{EntryKind, Fs, FsFile, OpenMode};
use crate::layout::LogPaths;
use crate::log::SealedSegment;
use crate::reader::{SegmentCursor, SegmentReader};
use crate::recovery::stubs::read_stubs_readonly;
use crate::recovery::{self, corruption, io_err, Survey, Used};
use crate::release_mark::ReleaseMark;
pub use checks::check_sealed_bytes;
use checks::{check_compressed_image, check_raw_image};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Looks at the directory at most this many times before reporting a problem that
/// keeps changing.
const LOOKS: u32 = 8;

/// What one segment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStat {
    /// Its id.
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// Sealed (footer present and valid).
    pub sealed: bool,
    /// Size of the segment file, uncompressed.
    pub file_size: u64,
    /// Stored compressed (`<id>.zst`).
    pub compressed: bool,
    /// Bytes its file takes (the compressed file's length when compressed).
    pub disk_bytes: u64,
    /// End of its valid frames.
    pub data_end: u64,
    /// Records in it (in its valid frames, if unsealed).
    pub records: u64,
    /// Records in the segments before it.
    pub base_record_index: u64,
    /// When it was created (ns since the Unix epoch).
    pub created_at_ns: u64,
    /// When it was sealed.
    pub sealed_at_ns: Option<u64>,
    /// For an unsealed segment whose valid frames end in bytes that are not a frame:
    /// (offset, reason). After a crash this is a torn write that the next open seals
    /// off; beside a live writer it may be a write in progress.
    pub torn_tail: Option<(u64, String)>,
    /// The last segment, unsealed, while a writer holds the log's lock: it is being
    /// written, so it was checked up to its last complete frame (`data_end`).
    pub live: bool,
    /// Where it is kept: locally, in the archive, or both.
    pub location: Location,
}

/// Where a segment is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// In the segment directory only (not archived, or no archive).
    Local,
    /// In the segment directory and in the archive (its stub is in `archive/`).
    Both,
    /// Only in the archive: `path` is its stub, and `verify` checks its object only
    /// when given the store ([`LogDir::with_archive`]).
    Archive,
}

impl Location {
    /// `local`, `both` or `archive`.
    pub fn name(self) -> &'static str {
        match self {
            Location::Local => "local",
            Location::Both => "both",
            Location::Archive => "archive",
        }
    }
}

/// A log directory opened for reading.
pub struct LogDir {
    paths: LogPaths,
    fs: PosixFs,
    mark: ReleaseMark,
    survey: Survey,
    /// Stubs of archived segments kept (at or above the mark).
    stubs: Vec<Stub>,
    /// The archive's store, to check (and read) archived-only segments.
    archive: Option<Arc<dyn ArchiveBackend>>,
}

/// The release mark and the segment directory, read together (one look).
fn look(fs: &PosixFs, paths: &LogPaths) -> AofResult<(ReleaseMark, Survey)> {
    let mark = recovery::read_mark(fs, paths)?;
    let survey = recovery::survey(fs, &paths.segments, mark.first_segment)?;
    Ok((mark, survey))
}

fn not_a_log(root: &Path, reason: &str) -> AofError {
    AofError::NotALog {
        path: root.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads `[0, len)` of `file` into memory.
fn read_image(file: &dyn FsFile, len: u64, path: &Path) -> AofResult<Vec<u8>> {
    let mut image = vec![0u8; len as usize];
    crate::fs::read_exact_at(file, 0, &mut image).map_err(io_err("read", path))?;
    Ok(image)
}

impl LogDir {
    /// Opens the log at `root` (the directory holding `segments/` and `LOCK`) and
    /// classifies its files. A missing directory, or one that holds no aof2 log, is a
    /// clear error naming it.
    pub fn open(root: &Path) -> AofResult<LogDir> {
        let fs = PosixFs::new();
        let paths = LogPaths::new(root);
        match fs.kind(root).map_err(io_err("stat", root))? {
            Some(EntryKind::Dir) => {}
            Some(_) => return Err(not_a_log(root, "it is not a directory")),
            None => return Err(not_a_log(root, "it does not exist")),
        }
        if fs
            .kind(&paths.segments)
            .map_err(io_err("stat", &paths.segments))?
            != Some(EntryKind::Dir)
        {
            return Err(not_a_log(
                root,
                &format!("it has no {}/ directory", crate::layout::SEGMENT_DIR),
            ));
        }
        let live = || lock_held(&paths.lock) != Some(false);
        let (mark, survey) = settle(live, || look(&fs, &paths))?;
        let stubs = read_stubs_readonly(&fs, &paths)?
            .into_iter()
            .filter(|s| s.segment.header.segment_id >= mark.first_segment)
            .collect();
        Ok(LogDir {
            paths,
            fs,
            mark,
            survey,
            stubs,
            archive: None,
        })
    }

    /// True when a writer holds the log's lock now (from `/proc/locks`, without
    /// touching the lock); false when none does or that cannot be told.
    pub fn writer_active(&self) -> bool {
        lock_held(&self.paths.lock).unwrap_or(false)
    }

    /// Marks the last segment live if it is unsealed and a writer holds the log.
    fn mark_live(&self, stats: &mut [SegmentStat]) {
        if let Some(last) = stats.last_mut() {
            if !last.sealed && self.writer_active() {
                last.live = true;
            }
        }
    }

    /// The segments with a valid header, in id order.
    pub fn segments(&self) -> &[Used] {
        &self.survey.used
    }

    /// Prepared segment files not used yet (blank or marked ready).
    pub fn prepared_files(&self) -> usize {
        self.survey.blank.len() + self.survey.readies.len()
    }

    /// Spare files (released files kept for reuse).
    pub fn spare_files(&self) -> usize {
        self.survey.spares.len()
    }

    /// Where the log starts: segments below the mark's first segment were released.
    pub fn release_mark(&self) -> ReleaseMark {
        self.mark
    }

    /// The log's directory.
    pub fn root(&self) -> &Path {
        &self.paths.root
    }

    fn open_file(&self, path: &Path) -> AofResult<Arc<dyn FsFile>> {
        self.fs
            .open(path, OpenMode::Read)
            .map_err(io_err("open", path))
    }

    /// A summary of each segment; unsealed ones are scanned to find their valid frames.
    pub fn stat(&self) -> AofResult<Vec<SegmentStat>> {
        let mut out: Vec<SegmentStat> = self
            .survey
            .used
            .iter()
            .map(|u| self.segment_stat(u))
            .collect::<AofResult<_>>()?;
        self.mark_live(&mut out);
        Ok(self.merged(out))
    }

    /// Segment `id` as the directory holds it now (a new look at its header and
    /// footer): to see whether it was sealed since the survey.
    pub fn reread(&self, id: u64) -> AofResult<Option<Used>> {
        let (_, survey) = settle(|| self.writer_active(), || look(&self.fs, &self.paths))?;
        Ok(survey.used.into_iter().find(|u| u.id == id))
    }

    fn segment_stat(&self, u: &Used) -> AofResult<SegmentStat> {
        self.stat_with(u, None)
    }

    /// As `segment_stat`, scanning `image` (the file from offset 0) if an unsealed
    /// segment's file was read already.
    fn stat_with(&self, u: &Used, image: Option<&[u8]>) -> AofResult<SegmentStat> {
        let mut st = SegmentStat {
            id: u.id,
            path: u.path.clone(),
            sealed: u.footer.is_some(),
            file_size: u.header.file_size,
            compressed: u.compressed,
            disk_bytes: u.disk_bytes,
            data_end: HEADER_LEN as u64,
            records: 0,
            base_record_index: u.header.base_record_index,
            created_at_ns: u.header.created_at_ns,
            sealed_at_ns: u.footer.map(|f| f.sealed_at_ns),
            torn_tail: None,
            live: false,
            location: Location::Local,
        };
        match u.footer {
            Some(f) => {
                st.data_end = f.data_end;
                st.records = f.record_count;
            }
            None => {
                let cap = format::data_capacity(u.header.file_size);
                let read;
                let image = match image {
                    Some(i) => i,
                    None => {
                        read = read_image(&*self.open_file(&u.path)?, cap, &u.path)?;
                        &read[..]
                    }
                };
                let scan = format::scan_frames(u.seed, image, cap);
                st.data_end = scan.data_end;
                st.records = scan.record_count;
                if let ScanStop::Invalid { offset, reason } = scan.stop {
                    let reason = if u.header.recycled {
                        format!("{reason}: a torn write or stale bytes of a recycled file")
                    } else {
                        reason
                    };
                    st.torn_tail = Some((offset, reason));
                } else if scan.torn_batch > 0 {
                    st.torn_tail = Some((
                        scan.data_end,
                        format!(
                            "an atomic batch never completed: {} records without its last",
                            scan.torn_batch
                        ),
                    ));
                }
            }
        }
        Ok(st)
    }

    /// Checks every byte the engine wrote: headers, every frame's checksum and chain,
    /// footers against the frames they seal, zeros past a sealed segment's data end,
    /// and record counts carried from segment to segment. Returns the first problem
    /// as an error naming segment, offset and path. An unsealed last segment that ends
    /// in a torn write is reported in its [`SegmentStat::torn_tail`], not as an error,
    /// unless a later frame proves the damaged bytes had been synced.
    ///
    /// Beside a live writer, a problem is reported only once a fresh look at the
    /// directory shows it again (see the module docs), and the segment being written
    /// is marked [`SegmentStat::live`].
    pub fn verify(&self) -> AofResult<Vec<SegmentStat>> {
        let mut first = true;
        // Sealed segments never change: each is checked once, however many looks it
        // takes, so a look after the first costs little more than the tail.
        let mut checked = std::collections::HashMap::new();
        let mut out = settle(
            || self.writer_active(),
            || {
                if std::mem::take(&mut first) {
                    return self.verify_survey(self.mark, &self.survey, &mut checked);
                }
                let (mark, fresh) = look(&self.fs, &self.paths)?;
                self.verify_survey(mark, &fresh, &mut checked)
            },
        )?;
        self.mark_live(&mut out);
        Ok(out)
    }

    fn verify_survey(
        &self,
        mark: ReleaseMark,
        survey: &Survey,
        checked: &mut std::collections::HashMap<u64, SegmentStat>,
    ) -> AofResult<Vec<SegmentStat>> {
        let used = &survey.used;
        recovery::check_only_last_unsealed(used)?;
        // Local segments and those only the archive holds, in id order.
        let mut all: Vec<(u64, Option<&Used>, Option<&Stub>)> =
            used.iter().map(|u| (u.id, Some(u), None)).collect();
        for st in &self.stubs {
            let id = st.segment.header.segment_id;
            if !used.iter().any(|u| u.id == id) {
                all.push((id, None, Some(st)));
            }
        }
        all.sort_by_key(|e| e.0);
        let mut out = Vec::with_capacity(all.len());
        // The first segment kept starts where the release mark says: any later, and
        // records between were lost rather than released.
        let mut records = mark.first_record_index;
        for (id, u, stub) in all {
            let (base, path) = match (u, stub) {
                (Some(u), _) => (u.header.base_record_index, u.path.clone()),
                (None, Some(st)) => (st.segment.header.base_record_index, self.paths.stub(id)),
                (None, None) => unreachable!("listed from one or the other"),
            };
            if base != records {
                return Err(corruption(
                    &path,
                    id,
                    0,
                    format!(
                        "segment starts at record {base} but the segments before it end at record {records}"
                    ),
                ));
            }
            let st = match (u, stub) {
                (Some(u), _) => match (u.footer, checked.get(&u.id)) {
                    (Some(_), Some(st)) => st.clone(),
                    (Some(f), None) => {
                        let st = self.verify_sealed(u, &f)?;
                        checked.insert(u.id, st.clone());
                        st
                    }
                    (None, _) => self.verify_unsealed(u)?,
                },
                (None, Some(stub)) => {
                    if self.archive.is_some() {
                        self.archived_bytes(stub)?;
                    }
                    self.archived_stat(stub)
                }
                (None, None) => unreachable!("listed from one or the other"),
            };
            records = base + st.records;
            out.push(st);
        }
        let stubs: Vec<u64> = self
            .stubs
            .iter()
            .map(|s| s.segment.header.segment_id)
            .collect();
        for st in &mut out {
            if st.location == Location::Local && stubs.contains(&st.id) {
                st.location = Location::Both;
            }
        }
        Ok(out)
    }

    fn verify_sealed(&self, u: &Used, f: &SegmentFooter) -> AofResult<SegmentStat> {
        let file = self.open_file(&u.path)?;
        // Sealed: immutable, so mapped (no copy) rather than read.
        let image = file.map().map_err(io_err("map", &u.path))?;
        if u.compressed {
            check_compressed_image(u, f, &image)?;
        } else {
            check_raw_image(u, f, &image)?;
        }
        self.segment_stat(u)
    }

    fn verify_unsealed(&self, u: &Used) -> AofResult<SegmentStat> {
        let file = self.open_file(&u.path)?;
        let cap = format::data_capacity(u.header.file_size);
        let image = read_image(&*file, u.header.file_size, &u.path)?;
        let mut st = self.stat_with(u, Some(&image))?;
        if let Some((offset, reason)) = &st.torn_tail {
            if let Some(proof) = format::find_frame_proving_corruption(u.seed, &image, *offset, cap)
            {
                return Err(corruption(
                    &u.path,
                    u.id,
                    *offset,
                    format!(
                        "{reason}; the frame at offset {proof} was appended after this offset was durable, so synced data is damaged"
                    ),
                ));
            }
        } else if let Some(i) = image[st.data_end as usize..cap as usize]
            .iter()
            .position(|&x| x != 0)
            .filter(|_| !u.header.recycled)
        {
            let off = st.data_end + i as u64;
            st.torn_tail = Some((off, "non-zero bytes after the last frame".into()));
        }
        let footer_at = (u.header.file_size - FOOTER_REGION) as usize;
        if let Some(i) = image[footer_at..].iter().position(|&x| x != 0) {
            // Sealed since the survey read its footer region (a live writer rolled):
            // check it as what it is now.
            let region = &image[footer_at..];
            if let Ok(Some(f)) = SegmentFooter::decode(region, u.seed, u.header.file_size) {
                if f.segment_id == u.id {
                    let sealed = Used {
                        footer: Some(f),
                        damaged_footer: None,
                        ..u.clone()
                    };
                    return self.verify_sealed(&sealed, &f);
                }
            }
            return Err(corruption(
                &u.path,
                u.id,
                (footer_at + i) as u64,
                "an unsealed segment has bytes in its footer region",
            ));
        }
        Ok(st)
    }

    /// A cursor over segment `u` from its first frame: sealed segments through a
    /// mapping, an unsealed one through `pread`, reading frames until a zero header.
    pub fn cursor(&self, u: &Used) -> AofResult<SegmentCursor> {
        if u.compressed {
            return Ok(SegmentCursor::new(SegmentReader::compressed(
                &self.fs,
                u.path.clone(),
            )?));
        }
        match u.footer {
            Some(footer) => Ok(SegmentCursor::new(SegmentReader::sealed(
                &self.fs,
                u.path.clone(),
                SealedSegment {
                    header: u.header,
                    seed: u.seed,
                    footer,
                    compressed: false,
                    disk_bytes: u.header.file_size,
                    archived: false,
                    local: true,
                },
            )?)),
            None => Ok(SegmentCursor::open_ended(SegmentReader::unsealed(
                &self.fs,
                u.path.clone(),
                u.header,
                u.seed,
                format::data_capacity(u.header.file_size),
            )?)),
        }
    }
}

/// Runs `look` until it succeeds, or until it fails the same way in two looks in a
/// row (or `LOOKS` times): a live writer's roll can make one look inconsistent, never
/// two the same way. With no writer holding the log (`live` false), nothing moves,
/// so the first failure stands; so do errors no race explains (a foreign file, a newer
/// format, a directory that is not a log).
fn settle<T>(live: impl Fn() -> bool, mut look: impl FnMut() -> AofResult<T>) -> AofResult<T> {
    let mut last: Option<String> = None;
    for n in 1.. {
        match look() {
            Ok(v) => return Ok(v),
            Err(e @ (AofError::Corruption { .. } | AofError::Io { .. })) => {
                let msg = e.to_string();
                if last.as_deref() == Some(msg.as_str()) || n >= LOOKS || !live() {
                    return Err(e);
                }
                log::debug!("aof2: {msg}; looking again");
                last = Some(msg);
                std::thread::sleep(Duration::from_millis(5 << n.min(4)));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// Whether some process holds an `flock` on `path`, read from `/proc/locks` (which
/// names the lock by device and inode) without touching the lock. `None` when that
/// cannot be told (no such file, no `/proc`).
pub fn lock_held(path: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(m.dev()),
        libc::minor(m.dev()),
        m.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    Some(locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; waiters have "->" after
        // the number and do not hold the lock.
        f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str())
    }))
}
