//! The read-only command-line tools: `aof2 dump`, `verify`, `stat` and `tail`. They
//! open a log directory without the writer's lock, so they can run beside a live
//! writer in another process, and never change a file.

use aof2_shards::inspect::{Location, LogDir, SegmentStat};
use aof2_shards::reader::{SegmentCursor, SegmentRecord};
use bop_rs::aof2::config::{ArchiveStore, RecordId};
use bop_rs::aof2::error::{AofError, AofResult};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Parses a record id written as `SEGMENT:OFFSET` (as the tools print it) or as the
/// raw 64-bit value.
pub fn parse_record_id(s: &str) -> Result<RecordId, String> {
    let bad = || format!("{s:?} is not a record id (SEGMENT:OFFSET, e.g. 0:64, or a raw u64)");
    match s.split_once(':') {
        Some((seg, off)) => {
            let seg: u32 = seg.trim().parse().map_err(|_| bad())?;
            let off: u32 = off.trim().parse().map_err(|_| bad())?;
            Ok(RecordId::from_parts(seg, off))
        }
        None => s
            .trim()
            .parse::<u64>()
            .map(RecordId::from_u64)
            .map_err(|_| bad()),
    }
}

fn out_err(e: std::io::Error) -> AofError {
    AofError::io("write", Path::new(crate::closed_stdout::STDOUT), e)
}

/// Writes one record as `ID<TAB>TIMESTAMP_NS<TAB>LEN<TAB>PAYLOAD`, the payload with
/// non-printable bytes escaped (or as a hex dump with `hex`).
fn print_record(
    out: &mut (impl Write + ?Sized),
    r: &SegmentRecord<'_>,
    hex: bool,
) -> std::io::Result<()> {
    let p = r.payload();
    write!(out, "{}\t{}\t{}\t", r.record_id(), r.timestamp(), p.len())?;
    if hex {
        for (i, b) in p.iter().enumerate() {
            if i > 0 && i % 32 == 0 {
                write!(out, "\n\t\t\t")?;
            }
            write!(out, "{b:02x}")?;
        }
        writeln!(out)
    } else {
        writeln!(out, "{}", p.escape_ascii())
    }
}

/// `aof2 dump`: prints records in order, from `from` (inclusive) if given, at most
/// `limit` of them. Returns how many were printed.
pub fn dump(
    root: &Path,
    from: Option<RecordId>,
    limit: Option<u64>,
    hex: bool,
    archive: Option<&ArchiveStore>,
) -> AofResult<u64> {
    let dir = open_dir(root, archive)?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut printed = 0u64;
    let limit = limit.unwrap_or(u64::MAX);
    let start_seg = from.map_or(0, |r| r.segment_index() as u64);
    if let Some(r) = from {
        let archived = dir
            .archived_only()
            .iter()
            .any(|s| s.segment.header.segment_id == start_seg);
        if !archived && !dir.segments().iter().any(|u| u.id == start_seg) {
            return Err(AofError::RecordNotFound {
                rid: r.to_string(),
                reason: format!("{} has no segment {start_seg}", root.display()),
            });
        }
    }
    // Segments only the archive holds, each read from its checked object, in id order
    // with the local ones.
    let archived = dir.archived_only();
    let mut next_archived = archived
        .iter()
        .filter(|s| s.segment.header.segment_id >= start_seg)
        .peekable();
    let mut print_archived_below = |below: u64, printed: &mut u64, out: &mut dyn Write| {
        while let Some(st) = next_archived.next_if(|s| s.segment.header.segment_id < below) {
            if *printed >= limit {
                break;
            }
            let id = st.segment.header.segment_id;
            let mut c = dir.archived_cursor(st)?;
            if let Some(r) = from.filter(|r| r.segment_index() as u64 == id) {
                c.seek(r)?;
            }
            while *printed < limit {
                match c.next()? {
                    Some(r) => {
                        print_record(out, &r, hex).map_err(out_err)?;
                        *printed += 1;
                    }
                    None => break,
                }
            }
        }
        Ok::<(), AofError>(())
    };
    for u in dir.segments().iter().filter(|u| u.id >= start_seg) {
        print_archived_below(u.id, &mut printed, &mut out)?;
        if printed >= limit {
            break;
        }
        let mut c = dir.cursor(u)?;
        if let Some(r) = from.filter(|r| r.segment_index() as u64 == u.id) {
            c.seek(r)?;
        }
        let mut sealed = u.footer.is_some();
        while printed < limit {
            match c.next() {
                Ok(Some(r)) => {
                    print_record(&mut out, &r, hex).map_err(out_err)?;
                    printed += 1;
                }
                Ok(None) => break,
                // The end of a segment being written (a write in progress) or torn by a
                // crash: sealed since (the writer rolled), it reads on through the seal;
                // still unsealed, what follows was never acknowledged.
                Err(AofError::Corruption { offset, reason, .. }) if !sealed => {
                    match dir.reread(u.id)? {
                        Some(now) if now.footer.is_some() => {
                            let at = c.position();
                            c = dir.cursor(&now)?;
                            c.seek(at)?;
                            sealed = true;
                        }
                        _ => {
                            let why = if dir.writer_active() {
                                "a write in progress (a writer holds the log)"
                            } else {
                                "a torn write, never acknowledged"
                            };
                            eprintln!(
                                "aof2 dump: segment {} stops at offset {offset}: {why} ({reason})",
                                u.id
                            );
                            break;
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    print_archived_below(u64::MAX, &mut printed, &mut out)?;
    out.flush().map_err(out_err)?;
    Ok(printed)
}

/// `aof2 verify`: checks every segment; prints one line per segment and a summary.
/// The log at `root`, with its archive directory when one is given.
/// The log directory at `root`, reading archived-only segments from `archive`.
fn open_dir(root: &Path, archive: Option<&ArchiveStore>) -> AofResult<LogDir> {
    let dir = LogDir::open(root)?;
    Ok(match archive {
        Some(a) => dir.with_archive(aof2_shards::archive::build_store(a)?),
        None => dir,
    })
}

pub fn verify(root: &Path, archive: Option<&ArchiveStore>) -> AofResult<Vec<SegmentStat>> {
    let dir = open_dir(root, archive)?;
    let stats = dir.verify()?;
    for s in &stats {
        let state = if s.sealed { "sealed" } else { "unsealed" };
        if s.location == Location::Archive {
            let how = if archive.is_some() {
                "object fetched and checked"
            } else {
                "stub only: pass --archive-dir or --s3-bucket to check its object"
            };
            println!(
                "segment {:>6}  {state:<8}  {:>9} records  {:>12} bytes of frames  (archived: {how})",
                s.id,
                s.records,
                s.data_end - aof2_shards::format::HEADER_LEN as u64
            );
            continue;
        }
        print!(
            "segment {:>6}  {state:<8}  {:>9} records  {:>12} bytes of frames",
            s.id,
            s.records,
            s.data_end - aof2_shards::format::HEADER_LEN as u64
        );
        match (&s.torn_tail, s.live) {
            (_, true) => println!(
                "  (being written: checked up to offset {}, its last complete frame)",
                s.data_end
            ),
            (Some((off, why)), false) => println!(
                "  (ends in a torn or in-progress write at offset {off}: {why}; never acknowledged)"
            ),
            (None, false) => println!(),
        }
    }
    let records: u64 = stats.iter().map(|s| s.records).sum();
    println!(
        "ok: {} segments, {records} records, every frame and footer checked in {}",
        stats.len(),
        root.display()
    );
    Ok(stats)
}

/// `aof2 stat`: one line per segment, then totals.
pub fn stat(root: &Path) -> AofResult<Vec<SegmentStat>> {
    let dir = LogDir::open(root)?;
    let stats = dir.stat()?;
    println!(
        "{:>8}  {:<8}  {:<8}  {:>12}  {:>12}  {:>12}  {:>10}  {:>12}  {:>20}",
        "segment",
        "state",
        "where",
        "raw bytes",
        "disk bytes",
        "data bytes",
        "records",
        "first record",
        "created (ns)"
    );
    for s in &stats {
        let state = match (s.sealed, s.live, &s.torn_tail) {
            (true, _, _) if s.compressed => "zstd",
            (true, _, _) => "sealed",
            (false, true, _) => "writing",
            (false, false, None) => "active",
            (false, false, Some(_)) => "torn",
        };
        println!(
            "{:>8}  {state:<8}  {:<8}  {:>12}  {:>12}  {:>12}  {:>10}  {:>12}  {:>20}",
            s.id,
            s.location.name(),
            s.file_size,
            s.disk_bytes,
            s.data_end,
            s.records,
            s.base_record_index,
            s.created_at_ns
        );
    }
    let records: u64 = stats.iter().map(|s| s.records).sum();
    let raw: u64 = stats.iter().map(|s| s.file_size).sum();
    let disk: u64 = stats.iter().map(|s| s.disk_bytes).sum();
    let zst: Vec<_> = stats.iter().filter(|s| s.compressed).collect();
    let compressed = if zst.is_empty() {
        String::new()
    } else {
        let raw: u64 = zst.iter().map(|s| s.file_size).sum();
        let disk: u64 = zst.iter().map(|s| s.disk_bytes).sum();
        format!(
            " ({} compressed: {raw} raw bytes in {disk}, {:.2}x)",
            zst.len(),
            disk as f64 / raw as f64
        )
    };
    println!(
        "{} segments ({} sealed), {records} records, {raw} raw bytes, {disk} bytes on disk{compressed}, {} prepared file(s) in {}",
        stats.len(),
        stats.iter().filter(|s| s.sealed).count(),
        dir.prepared_files(),
        root.display()
    );
    if let Some((n, bytes)) = upload_backlog(root, &stats) {
        let archived = stats
            .iter()
            .filter(|s| s.location != Location::Local)
            .count();
        let only = stats
            .iter()
            .filter(|s| s.location == Location::Archive)
            .count();
        println!(
            "archive: {archived} segments archived ({only} only there), upload backlog {n} sealed segments ({bytes} bytes)"
        );
    }
    Ok(stats)
}

/// For a log that uses an archive (it has a `LOG_ID`): sealed segments kept only
/// locally (not uploaded yet) and their bytes.
fn upload_backlog(root: &Path, stats: &[SegmentStat]) -> Option<(u64, u64)> {
    if !root.join("LOG_ID").exists() {
        return None;
    }
    let waiting = stats
        .iter()
        .filter(|s| s.sealed && s.location == Location::Local);
    Some(waiting.fold((0, 0), |(n, b), s| (n + 1, b + s.disk_bytes)))
}

/// Where `aof2 tail` reads.
struct TailPos {
    seg: u64,
    cursor: SegmentCursor,
    sealed: bool,
}

/// `aof2 tail`: prints the last `lines` records; with `follow`, keeps printing
/// records as the writer (another process) adds them, checking every `interval`.
/// Records are shown once written and checksummed, which can be before they are
/// durable: after a writer crash, the last ones shown may not survive.
pub fn tail(root: &Path, lines: u64, follow: bool, interval: Duration) -> AofResult<()> {
    let dir = LogDir::open(root)?;
    // Start `lines` records before the end.
    let stats = dir.stat()?;
    let total: u64 = stats.iter().map(|s| s.records).sum();
    let mut skip = total.saturating_sub(lines);
    let mut pos: Option<TailPos> = None;
    for u in dir.segments() {
        let n = stats.iter().find(|s| s.id == u.id).map_or(0, |s| s.records);
        if skip >= n && u.footer.is_some() {
            skip -= n;
            continue;
        }
        pos = Some(TailPos {
            seg: u.id,
            cursor: dir.cursor(u)?,
            sealed: u.footer.is_some(),
        });
        break;
    }
    let stdout = std::io::stdout();
    loop {
        let Some(p) = pos.as_mut() else {
            // No segment yet: wait for the first.
            if !follow {
                return Ok(());
            }
            std::thread::sleep(interval);
            let dir = LogDir::open(root)?;
            if let Some(u) = dir.segments().first() {
                pos = Some(TailPos {
                    seg: u.id,
                    cursor: dir.cursor(u)?,
                    sealed: u.footer.is_some(),
                });
            }
            continue;
        };
        let mut out = stdout.lock();
        loop {
            match p.cursor.next() {
                Ok(Some(r)) => {
                    if skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    print_record(&mut out, &r, false).map_err(out_err)?;
                }
                Ok(None) => break,
                // The end of a segment being written: a write in progress, or torn.
                Err(AofError::Corruption { .. }) if !p.sealed => break,
                Err(e) => return Err(e),
            }
        }
        out.flush().map_err(out_err)?;
        drop(out);
        if !follow {
            return Ok(());
        }
        // Caught up: see whether the segment was sealed and a later one started.
        std::thread::sleep(interval);
        let dir = match LogDir::open(root) {
            Ok(d) => d,
            // A file renamed or removed between listing and reading (a roll): next time.
            Err(AofError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue
            }
            Err(e) => return Err(e),
        };
        let Some(cur) = dir.segments().iter().find(|u| u.id == p.seg) else {
            continue;
        };
        let at = p.cursor.position();
        if cur.footer.is_none() && p.sealed {
            // A writer continued the segment after a clean close (its footer was
            // zeroed): read on from where we are, as in a segment being written.
            let mut c = dir.cursor(cur)?;
            if c.seek(at).is_ok() {
                p.cursor = c;
                p.sealed = false;
            }
            continue;
        }
        if let Some(f) = cur.footer {
            if u64::from(at.segment_offset()) < f.data_end {
                // Sealed since (or continued and sealed again): read the rest of its
                // frames through the seal.
                let mut c = dir.cursor(cur)?;
                c.seek(at)?;
                p.cursor = c;
                p.sealed = true;
                continue;
            }
            if let Some(next) = dir.segments().iter().find(|u| u.id > p.seg) {
                *p = TailPos {
                    seg: next.id,
                    cursor: dir.cursor(next)?,
                    sealed: next.footer.is_some(),
                };
            }
        }
    }
}

/// A segment's figures as JSON (`stat --json`, `verify --json`).
fn segment_json(s: &SegmentStat) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "path": s.path.display().to_string(),
        "sealed": s.sealed,
        "location": s.location.name(),
        "compressed": s.compressed,
        "live": s.live,
        "file_size": s.file_size,
        "disk_bytes": s.disk_bytes,
        "data_end": s.data_end,
        "records": s.records,
        "base_record_index": s.base_record_index,
        "created_at_ns": s.created_at_ns,
        "sealed_at_ns": s.sealed_at_ns,
        "torn_tail": s.torn_tail.as_ref().map(|(offset, reason)| {
            serde_json::json!({ "offset": offset, "reason": reason })
        }),
    })
}

/// `aof2 stat --json`: `{"dir", "segments": [...], "records", "raw_bytes", "disk_bytes"}`.
pub fn stat_json(root: &Path) -> AofResult<()> {
    let stats = LogDir::open(root)?.stat()?;
    let backlog = upload_backlog(root, &stats);
    let v = serde_json::json!({
        "dir": root.display().to_string(),
        "segments": stats.iter().map(segment_json).collect::<Vec<_>>(),
        "records": stats.iter().map(|s| s.records).sum::<u64>(),
        "raw_bytes": stats.iter().map(|s| s.file_size).sum::<u64>(),
        "disk_bytes": stats.iter().map(|s| s.disk_bytes).sum::<u64>(),
        "upload_backlog": backlog.map(|(n, b)| serde_json::json!({ "segments": n, "bytes": b })),
    });
    println!("{v}");
    Ok(())
}

/// `aof2 verify --json`: `{"dir", "ok": true, "segments": [...], "records"}`, or on
/// damage `{"dir", "ok": false, "error": "..."}` (and the exit status is 1).
pub fn verify_json(root: &Path, archive: Option<&ArchiveStore>) -> AofResult<()> {
    let r = open_dir(root, archive).and_then(|d| d.verify());
    let v = match &r {
        Ok(stats) => serde_json::json!({
            "dir": root.display().to_string(),
            "ok": true,
            "segments": stats.iter().map(segment_json).collect::<Vec<_>>(),
            "records": stats.iter().map(|s| s.records).sum::<u64>(),
        }),
        Err(e) => serde_json::json!({
            "dir": root.display().to_string(),
            "ok": false,
            "error": e.to_string(),
        }),
    };
    println!("{v}");
    r.map(|_| ())
}
