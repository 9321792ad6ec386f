//! Opening a log directory: take the writer lock, classify every file, verify what is
//! not sealed, seal the last segment at its last valid frame, and hand the log core a
//! consistent starting state. No manifest: segment headers and footers say it all.
//!
//! What may be found after a crash, given the write order the log core keeps (header
//! synced before frames; frames synced before the footer; footer synced before anything
//! of the next segment):
//! - `*.seg.tmp`: a preparation that did not finish. Removed.
//! - A blank-headed `*.seg` after the last used segment: prepared, never written. An
//!   append may still have been handed an id in it (in memory) before the crash, so it
//!   is renamed past every id on disk and reused there; it is never deleted, so the
//!   highest id on disk never goes down. Ids can therefore skip after a crash; records
//!   cannot (`base_record_index` chains the segments).
//! - `*.seg.ready`: a prepared file a clean close proved unused. Reused under its own
//!   id, so after clean closes ids stay dense.
//! - The last used segment unsealed, ending in a torn write or not. Its valid frames
//!   are kept, it is sealed at the last one, and appends continue in a new segment.
//! - `RELEASED` (in the root): the release mark. Segment files below its first segment
//!   are leftovers of a release a crash interrupted: they are moved to the spare pool
//!   unread. The first segment kept must start at the mark's record index; if it starts
//!   later, records were lost, which is an error. `RELEASED.tmp` is a mark that was
//!   never put in place: removed.
//! - `*.spare`: released files kept for reuse. Their contents are stale; only their
//!   size matters.
//!
//! Anything else (an unsealed segment before the last, a damaged header or footer, a
//! gap in the ids, a frame that fails its checksum although a later frame proves it was
//! synced, a file the engine does not name) is an error naming the path and offset,
//! and nothing is changed on disk.

mod compressed;
mod seal;
pub mod stubs;

pub use compressed::CompressedFindings;

use crate::buffer::AlignedBuf;
use crate::clock::Clock;
use crate::error::{AofError, AofResult};
use crate::format::{
    self, FormatError, HeaderState, ScanStop, SegmentFooter, SegmentHeader, BLOCK, FOOTER_LEN,
    FOOTER_REGION,
};
use crate::fs::{EntryKind, Fs, FsFile, FsLock, OpenMode};
use crate::layout::{parse_name, LogPaths, SegmentName};
use crate::log::Recovered;
use crate::release_mark::ReleaseMark;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An opened log directory: the lock and the state to continue from.
pub struct Opened {
    /// What the log core continues from.
    pub recovered: Recovered,
    /// The writer lock, held for as long as the log is open.
    pub lock: Box<dyn FsLock>,
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> AofError + 'a {
    move |e| AofError::io(op, path, e)
}

pub(crate) fn corruption(
    path: &Path,
    segment: u64,
    offset: u64,
    reason: impl Into<String>,
) -> AofError {
    AofError::Corruption {
        path: path.to_path_buf(),
        segment,
        offset,
        reason: reason.into(),
    }
}

/// Creates `dir` and any missing parents with permission bits `mode`. The parents whose
/// new entries are not synced yet are added to `unsynced` (the log syncs them with its
/// first segment file, before any record is acknowledged: until then nothing in them
/// needs to survive a crash). Returns true if `dir` was created.
fn mkdir_deferred(
    fs: &dyn Fs,
    dir: &Path,
    mode: u32,
    unsynced: &mut Vec<PathBuf>,
) -> AofResult<bool> {
    match fs.kind(dir).map_err(io_err("stat", dir))? {
        Some(EntryKind::Dir) => return Ok(false),
        Some(_) => {
            return Err(AofError::InvalidConfig(format!(
                "{} exists and is not a directory",
                dir.display()
            )))
        }
        None => {}
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    mkdir_deferred(fs, parent, mode, unsynced)?;
    match fs.mkdir(dir, mode) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(AofError::io("create directory", dir, e)),
    }
    if !unsynced.iter().any(|d| d == parent) {
        unsynced.push(parent.to_path_buf());
    }
    Ok(true)
}

/// Opens (creating if needed) the log at `paths`, recovering it. Files it creates get
/// permission bits `file_mode`, directories the same plus search where read is set.
pub fn open_log(fs: &dyn Fs, paths: &LogPaths, clock: &Clock, file_mode: u32) -> AofResult<Opened> {
    let dir_mode = crate::config::dir_mode(file_mode);
    let mut unsynced = Vec::new();
    mkdir_deferred(fs, &paths.root, dir_mode, &mut unsynced)?;
    let lock = match fs.lock_exclusive(&paths.lock, file_mode) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(AofError::Locked {
                path: paths.root.clone(),
            })
        }
        Err(e) => return Err(AofError::io("create lock file", &paths.lock, e)),
    };
    let created = mkdir_deferred(fs, &paths.segments, dir_mode, &mut unsynced)?;
    // Trust only what is on the disk: a previous session may have ended with unsynced
    // writes, or with a failed sync whose pages still look written in the cache. (A
    // directory created just now holds nothing to settle.)
    if !created {
        fs.settle_dir(&paths.segments).map_err(io_err(
            "sync the file system and drop cached pages of",
            &paths.segments,
        ))?;
    }
    let mut recovered = recover(fs, paths, clock)?;
    recovered.unsynced_dirs = unsynced;
    Ok(Opened { recovered, lock })
}

/// A segment file with a valid header, as [`survey`] found it.
#[derive(Debug, Clone)]
pub struct Used {
    /// Its id (from the name, matching the header).
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// Its header.
    pub header: SegmentHeader,
    /// The frame seed (the header's checksum).
    pub seed: u32,
    /// Its seal footer, if sealed.
    pub footer: Option<SegmentFooter>,
    /// Why the bytes where its footer goes do not decode, if they are not blank: a
    /// footer write cut short (a crash or a short write while sealing) on the last
    /// segment, which is then sealed again; damage anywhere else.
    pub damaged_footer: Option<String>,
    /// Stored compressed: `path` is the `.zst` file.
    pub compressed: bool,
    /// The file's length.
    pub disk_bytes: u64,
}

/// Every file of a segment directory, classified. Reads only.
#[derive(Debug, Default)]
pub struct Survey {
    /// Segments with a valid header, in id order.
    pub used: Vec<Used>,
    /// `.seg` files with a blank header (prepared, never written): (id, path, size).
    pub blank: Vec<(u64, PathBuf, u64)>,
    /// `.seg.ready` files (prepared, proven unused by a clean close): (id, path).
    pub readies: Vec<(u64, PathBuf)>,
    /// `.seg.tmp` files (unfinished preparations).
    pub temps: Vec<PathBuf>,
    /// `.spare` files (released files kept for reuse): (old id, path).
    pub spares: Vec<(u64, PathBuf)>,
    /// `.seg` files below the release mark (released; a crash stopped their removal):
    /// (id, path). Never read.
    pub released: Vec<(u64, PathBuf)>,
    /// What the compressed files ask recovery to do (see `compressed.rs`).
    pub compressed: CompressedFindings,
}

/// Reads the release mark of the log at `paths` (the default, nothing released, when
/// there is none).
pub fn read_mark(fs: &dyn Fs, paths: &LogPaths) -> AofResult<ReleaseMark> {
    let path = &paths.released;
    if fs.kind(path).map_err(io_err("stat", path))?.is_none() {
        return Ok(ReleaseMark::default());
    }
    let file = fs
        .open(path, OpenMode::Read)
        .map_err(io_err("open", path))?;
    let mut b = vec![0u8; BLOCK];
    let n = file.pread(0, &mut b).map_err(io_err("read", path))?;
    ReleaseMark::decode(&b[..n]).map_err(|e| AofError::Corruption {
        path: path.clone(),
        segment: 0,
        offset: 0,
        reason: format!(
            "release mark: {e} (it is only ever replaced whole by a rename, so this is \
                 damage, not a torn write)"
        ),
    })
}

/// Lists and classifies the segment directory `dir`, reading every header and footer of
/// segments from `first_kept` on (the release mark's first segment; those below are
/// released and listed unread). Anything the engine would not have written there (a
/// foreign file, a damaged header or footer, a blank header before a used one) is an
/// error naming the path.
pub fn survey(fs: &dyn Fs, dir: &Path, first_kept: u64) -> AofResult<Survey> {
    let mut names = fs.list_dir(dir).map_err(io_err("list", dir))?;
    names.sort();
    let mut temps = Vec::new();
    let mut readies = Vec::new();
    let mut segments = Vec::new();
    let mut spares = Vec::new();
    let mut released = Vec::new();
    let mut zsts = Vec::new();
    let mut findings = CompressedFindings::default();
    for name in names {
        let path = dir.join(&name);
        let parsed = name.to_str().and_then(parse_name);
        let kind = fs.kind(&path).map_err(io_err("stat", &path))?;
        if kind.is_none() {
            // Renamed or removed since the listing: a live writer's preparation, seen
            // by a read-only tool (recovery holds the lock, so nothing moves then).
            continue;
        }
        match (parsed, kind) {
            (Some(SegmentName::Temp(_)), Some(EntryKind::File)) => temps.push(path),
            (Some(SegmentName::Ready(id)), Some(EntryKind::File)) => readies.push((id, path)),
            (Some(SegmentName::Segment(id)), Some(EntryKind::File)) if id < first_kept => {
                released.push((id, path))
            }
            (Some(SegmentName::Segment(id)), Some(EntryKind::File)) => segments.push((id, path)),
            (Some(SegmentName::Spare(id)), Some(EntryKind::File)) => spares.push((id, path)),
            (Some(SegmentName::Compressed(id)), Some(EntryKind::File)) => zsts.push((id, path)),
            (Some(SegmentName::CompressedTemp(_)), Some(EntryKind::File)) => {
                findings.drop.push(path)
            }
            _ => return Err(AofError::ForeignFile { path }),
        }
    }
    segments.sort();

    let mut used: Vec<Used> = Vec::new();
    let mut blank: Vec<(u64, PathBuf, u64)> = Vec::new();
    for (id, path) in segments {
        let (file, size, head) = match read_head(fs, &path) {
            Ok(r) => r,
            // Gone since the listing (see above).
            Err(AofError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                continue
            }
            Err(e) => return Err(e),
        };
        let state = match SegmentHeader::decode(&head) {
            Ok(s) => s,
            // A header write cut short (a crash, a short write) before anything else
            // was written: the file holds no frame, since a header is synced before any
            // frame is written. It is a blank prepared file, moved past like one.
            // (Any damage but a newer format's version, whose files are never touched.)
            Err(ref e)
                if !matches!(e, FormatError::UnsupportedVersion(v) if *v > format::SEGMENT_VERSION)
                    && valid_prepared_size(size)
                    && zero_after_header(&*file, &path)? =>
            {
                log::warn!(
                    "aof2: {} has a torn header and no frames: treated as a blank prepared file",
                    path.display()
                );
                HeaderState::Blank
            }
            Err(FormatError::UnsupportedVersion(v)) => {
                return Err(AofError::UnsupportedVersion {
                    path,
                    found: v,
                    supported: format::SEGMENT_VERSION,
                })
            }
            Err(FormatError::BadMagic) => {
                return Err(corruption(
                    &path,
                    id,
                    0,
                    "not an aof2 segment (bad magic in the header)",
                ))
            }
            Err(e) => return Err(corruption(&path, id, 0, format!("segment header: {e}"))),
        };
        match state {
            HeaderState::Blank => blank.push((id, path, size)),
            HeaderState::Valid(header, seed) => {
                if header.segment_id != id {
                    return Err(corruption(
                        &path,
                        id,
                        0,
                        format!("header names segment {}", header.segment_id),
                    ));
                }
                if header.file_size != size {
                    return Err(corruption(
                        &path,
                        id,
                        0,
                        format!(
                            "header says {} bytes, the file has {size}",
                            header.file_size
                        ),
                    ));
                }
                if let Some((bid, bpath, _)) = blank.first() {
                    return Err(corruption(
                        bpath,
                        *bid,
                        0,
                        format!("blank header before used segment {id}: its header was lost"),
                    ));
                }
                let mut tail = [0u8; FOOTER_LEN];
                let at = size - FOOTER_REGION;
                backend_read(&*file, at, &mut tail, &path)?;
                let (footer, damaged_footer) = match SegmentFooter::decode(&tail, seed, size) {
                    Ok(f) => (f, None),
                    Err(e) => (None, Some(format!("seal footer: {e}"))),
                };
                if let Some(f) = footer {
                    if f.segment_id != id {
                        return Err(corruption(
                            &path,
                            id,
                            at,
                            format!("footer names segment {}", f.segment_id),
                        ));
                    }
                }
                used.push(Used {
                    id,
                    path,
                    header,
                    seed,
                    footer,
                    damaged_footer,
                    compressed: false,
                    disk_bytes: header.file_size,
                });
            }
        }
    }
    compressed::survey_compressed(fs, zsts, &mut used, first_kept, &mut findings)?;

    readies.sort();
    released.sort();
    spares.sort();
    Ok(Survey {
        used,
        blank,
        readies,
        temps,
        spares,
        released,
        compressed: findings,
    })
}

/// Only the last used segment may be unsealed: nothing of a segment is written before
/// the previous one's footer is durable.
pub fn check_only_last_unsealed(used: &[Used]) -> AofResult<()> {
    for u in used.iter().rev().skip(1) {
        if u.footer.is_none() {
            let at = u.header.file_size - FOOTER_REGION;
            return Err(match &u.damaged_footer {
                Some(why) => corruption(&u.path, u.id, at, why.clone()),
                None => corruption(
                    &u.path,
                    u.id,
                    at,
                    "segment is not sealed but a later segment exists: its seal footer was lost",
                ),
            });
        }
    }
    Ok(())
}

fn recover(fs: &dyn Fs, paths: &LogPaths, clock: &Clock) -> AofResult<Recovered> {
    let dir = &paths.segments;
    let mark = read_mark(fs, paths)?;
    if mark != ReleaseMark::default() {
        // The mark may have been renamed into place without its directory being synced
        // (a session that failed or crashed right there): make it durable before acting
        // on it, or a crash could bring back an older mark after the files below this
        // one were moved away.
        fs.fsync_dir(&paths.root)
            .map_err(io_err("fsync directory", &paths.root))?;
    }
    if fs
        .kind(&paths.released_tmp)
        .map_err(io_err("stat", &paths.released_tmp))?
        .is_some()
    {
        // A mark that was never renamed into place: nothing it describes happened.
        fs.unlink(&paths.released_tmp)
            .map_err(io_err("remove", &paths.released_tmp))?;
        fs.fsync_dir(&paths.root)
            .map_err(io_err("fsync directory", &paths.root))?;
    }
    let Survey {
        mut used,
        blank,
        readies,
        temps,
        spares,
        released,
        compressed: findings,
    } = survey(fs, dir, mark.first_segment)?;

    check_only_last_unsealed(&used)?;

    let mut last_ts = 0u64;
    let mut dir_changed = false;
    // A swap cut short: the compressed file is complete (it validated); make its
    // rename durable before the raw copy goes.
    if !findings.superseded.is_empty() {
        fs.fsync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    for path in findings.superseded.iter().chain(&findings.drop) {
        log::info!(
            "aof2: removing {} (finishing or undoing a compression swap)",
            path.display()
        );
        fs.unlink(path).map_err(io_err("remove", path))?;
        dir_changed = true;
    }
    // Released files a crash left behind go to the spare pool (the log trims it).
    let mut spare_paths = spares;
    for (id, path) in released {
        log::info!(
            "aof2: {} is below the release mark (segment {}): finishing its release",
            path.display(),
            mark.first_segment
        );
        let to = paths.spare(id);
        fs.rename(&path, &to).map_err(io_err("rename", &path))?;
        // The rename replaced a spare of the same id, if there was one.
        spare_paths.retain(|s| s.0 != id);
        spare_paths.push((id, to));
        dir_changed = true;
    }
    let mut spares = Vec::new();
    for (id, path) in spare_paths {
        let (_, size, _) = read_head(fs, &path)?;
        if valid_prepared_size(size) {
            spares.push((id, size));
        } else {
            log::warn!(
                "aof2: spare file {} has {size} bytes, not a segment size: removed",
                path.display()
            );
            fs.unlink(&path).map_err(io_err("remove", &path))?;
            dir_changed = true;
        }
    }
    if let Some(u) = used.last_mut() {
        if u.footer.is_none() {
            let footer = seal::seal_unsealed(fs, u, clock)?;
            u.footer = Some(footer);
        }
    }
    let merged = stubs::merge_archived(fs, paths, mark, &used)?;
    last_ts = last_ts.max(merged.last_ts);
    let (sealed, records_total, last_archived) =
        (merged.sealed, merged.records_total, merged.last_archived);
    let (archived, archive_deletes) = (merged.archived, merged.archive_deletes);
    // Ids of the files above the last used segment, before they move (see
    // `ids_above_unused`).
    let blank_ids: Vec<u64> = blank.iter().map(|b| b.0).collect();
    let ready_ids: Vec<u64> = readies.iter().map(|r| r.0).collect();
    // Continue past every id on disk, blank files included: an append may have been
    // handed an id in a prepared file before the crash (in memory only), and ids are
    // never handed out twice. So the highest id on disk must never go down: blank
    // files are renamed past it (every prefix of those renames keeps it) and reused,
    // never deleted.
    // A `.ready` file is different: a clean close renamed it after everything was
    // durable, proving no append entered it, so it keeps its id and ids stay dense.
    let max_on_disk = used
        .iter()
        .map(|u| u.id)
        .chain(last_archived)
        .chain(blank.iter().map(|b| b.0))
        .max();
    // A `.ready` file vouches only for its own id: ids below it may have been handed
    // out (in a session that crashed before the one that closed cleanly), so never
    // continue below the first one.
    // Nor below the release mark: ids of released segments are never handed out again.
    let floor = max_on_disk.map_or(0, |m| m + 1).max(mark.first_segment);
    let next_segment = readies.first().map_or(floor, |r| floor.max(r.0));
    let mut prepared = Vec::new();
    let mut forward = Vec::new();
    for (id, path) in readies {
        let (_, size, head) = read_head(fs, &path)?;
        if head.iter().any(|&b| b != 0) {
            return Err(corruption(
                &path,
                id,
                0,
                "a prepared segment marked ready is not blank",
            ));
        }
        if id == next_segment + prepared.len() as u64 && valid_prepared_size(size) {
            fs.rename(&path, &paths.segment(id))
                .map_err(io_err("rename", &path))?;
            prepared.push((id, size));
            dir_changed = true;
        } else {
            forward.push((id, path, size));
        }
    }
    forward.extend(blank);
    for (id, path, size) in forward {
        if !valid_prepared_size(size) {
            return Err(corruption(
                &path,
                id,
                0,
                format!("blank segment of {size} bytes: not a size aof2 prepares"),
            ));
        }
        // A torn header (see `survey`) is zeroed first, so the file is truly blank
        // wherever it goes next (a `.ready` file must be).
        let (_, _, head) = read_head(fs, &path)?;
        if head.iter().any(|&b| b != 0) {
            let f = fs
                .open(&path, OpenMode::Write { direct: false })
                .map_err(io_err("open", &path))?;
            crate::fs::write_all_at(&*f, 0, &[&[0u8; format::HEADER_LEN]])
                .and_then(|_| f.fdatasync())
                .map_err(io_err("zero the torn header of", &path))?;
        }
        let new_id = next_segment + prepared.len() as u64;
        fs.rename(&path, &paths.segment(new_id))
            .map_err(io_err("rename", &path))?;
        prepared.push((new_id, size));
        dir_changed = true;
    }
    for t in temps {
        log::info!(
            "aof2: removing unfinished segment preparation {}",
            t.display()
        );
        fs.unlink(&t).map_err(io_err("remove", &t))?;
        dir_changed = true;
    }
    if dir_changed {
        fs.fsync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    let continuable = match used.last() {
        Some(u)
            if ids_above_unused(u.id, &blank_ids, &ready_ids)
                && last_archived.is_none_or(|a| a < u.id) =>
        {
            continuable(fs, u)?
        }
        _ => None,
    };
    Ok(Recovered {
        next_segment,
        records_total,
        sealed,
        prepared,
        last_timestamp_ns: last_ts,
        mark,
        spares,
        unsynced_dirs: Vec::new(),
        continuable,
        archived,
        archive_deletes,
    })
}

/// True when no record id above segment `last` can have been handed out: no blank
/// `.seg` file follows it (a session that crashed may have handed out ids in one), and
/// the `.ready` files (each proving only its own id unused) are exactly the next ids,
/// with no gap where a crashed session's file was moved past.
fn ids_above_unused(last: u64, blank: &[u64], ready: &[u64]) -> bool {
    blank.is_empty()
        && ready
            .iter()
            .enumerate()
            .all(|(i, &id)| id == last + 1 + i as u64)
}

/// The last segment, if a clean close sealed it (raw, kept): the next session may
/// continue it; reads its partly filled last block for that. Not after a crash: a
/// segment recovery sealed may have had ids past its last valid frame handed out.
fn continuable(fs: &dyn Fs, u: &Used) -> AofResult<Option<crate::log::Continuable>> {
    let Some(f) = u.footer.filter(|f| f.closed_cleanly) else {
        return Ok(None);
    };
    if u.compressed {
        return Ok(None);
    }
    let from = f.data_end & !(BLOCK as u64 - 1);
    let mut tail = vec![0u8; (f.data_end - from) as usize];
    if !tail.is_empty() {
        let file = fs
            .open(&u.path, OpenMode::Read)
            .map_err(io_err("open", &u.path))?;
        backend_read(&*file, from, &mut tail, &u.path)?;
    }
    Ok(Some(crate::log::Continuable {
        segment: u.id,
        tail,
    }))
}

/// Opens a segment file and reads its size and the bytes where its header goes (fewer
/// if the file is shorter, which header decoding reports).
fn read_head(fs: &dyn Fs, path: &Path) -> AofResult<(Arc<dyn FsFile>, u64, Vec<u8>)> {
    let file = fs
        .open(path, OpenMode::Read)
        .map_err(io_err("open", path))?;
    let size = file.size().map_err(io_err("stat", path))?;
    let mut head = vec![0u8; format::HEADER_LEN];
    let n = file.pread(0, &mut head).map_err(io_err("read", path))?;
    head.truncate(n);
    Ok((file, size, head))
}

/// True when the rest of the first block after the header is zero: no frame was
/// written (the first frame starts right after the header, and every write of frames
/// covers it until the block is full). Only the first block is looked at, since a
/// recycled file holds stale bytes past it (zeroed with the header when recycled).
fn zero_after_header(file: &dyn FsFile, path: &Path) -> AofResult<bool> {
    let mut block = vec![0u8; BLOCK];
    let n = file.pread(0, &mut block).map_err(io_err("read", path))?;
    Ok(n == BLOCK && block[format::HEADER_LEN..].iter().all(|&b| b == 0))
}

/// A size the engine prepares segment files at.
fn valid_prepared_size(size: u64) -> bool {
    (format::MIN_SEGMENT_FILE..=format::MAX_SEGMENT_FILE).contains(&size)
        && size.is_multiple_of(BLOCK as u64)
}

fn backend_read(
    file: &dyn crate::fs::FsFile,
    at: u64,
    buf: &mut [u8],
    path: &Path,
) -> AofResult<()> {
    crate::fs::read_exact_at(file, at, buf).map_err(io_err("read", path))
}
