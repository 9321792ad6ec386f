//! Opening a log's archive records: its stubs (`archive/<id>.stub`), read before the
//! segment directory is reconciled, so segments only the archive holds keep their
//! place in the log ([`merge_archived`]); stubs a crash left half-written are removed.

use super::{corruption, io_err, Used};
use crate::archive::stub::{read_file, Stub};
use crate::error::{AofError, AofResult};
use crate::fs::{EntryKind, Fs};
use crate::layout::LogPaths;
use crate::log::SealedSegment;
use crate::release_mark::ReleaseMark;
use std::path::PathBuf;

/// The stubs in `paths.archive`, in id order (none when the directory is missing),
/// leftovers of unfinished stub writes removed and the directory synced.
pub fn read_stubs(fs: &dyn Fs, paths: &LogPaths) -> AofResult<Vec<Stub>> {
    read(fs, paths, true)
}

/// As [`read_stubs`], changing nothing (the command-line tools): unfinished stub
/// writes are skipped.
pub fn read_stubs_readonly(fs: &dyn Fs, paths: &LogPaths) -> AofResult<Vec<Stub>> {
    read(fs, paths, false)
}

fn read(fs: &dyn Fs, paths: &LogPaths, repair: bool) -> AofResult<Vec<Stub>> {
    let dir = &paths.archive;
    if fs.kind(dir).map_err(io_err("stat", dir))? != Some(EntryKind::Dir) {
        return Ok(Vec::new());
    }
    let mut stubs = Vec::new();
    let mut changed = false;
    for name in fs.list_dir(dir).map_err(io_err("list", dir))? {
        let name = name.to_string_lossy().into_owned();
        let path = dir.join(&name);
        if name.ends_with(".stub.tmp") && !repair {
            continue;
        }
        if name.ends_with(".stub.tmp") {
            // Written before its rename: the upload it records was not confirmed to
            // the log, which uploads again (the store answers "exists" with the same
            // checksum).
            fs.unlink(&path).map_err(io_err("remove", &path))?;
            changed = true;
            continue;
        }
        let Some(id) = name
            .strip_suffix(".stub")
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Err(AofError::ForeignFile { path });
        };
        let bytes = read_file(fs, &path).map_err(io_err("read", &path))?;
        let stub = Stub::decode(&bytes)
            .map_err(|why| corruption(&path, id, 0, format!("archive stub: {why}")))?;
        if stub.segment.header.segment_id != id {
            return Err(corruption(
                &path,
                id,
                0,
                format!(
                    "archive stub of segment {} under the name of segment {id}",
                    stub.segment.header.segment_id
                ),
            ));
        }
        stubs.push(stub);
    }
    // A stub may have been renamed into place without its directory being synced (an
    // upload whose last step failed, or a crash right there): make it durable before
    // a local copy is let go on its word.
    if repair && (changed || !stubs.is_empty()) {
        fs.fsync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    stubs.sort_by_key(|s| s.segment.header.segment_id);
    Ok(stubs)
}

/// The sealed segments recovery found (local files and segments only the archive
/// holds, in id order), checked to run record after record from the release mark.
pub struct Merged {
    /// The sealed segments, in id order.
    pub sealed: Vec<SealedSegment>,
    /// Records in all of them and the released ones.
    pub records_total: u64,
    /// The newest seal time among them.
    pub last_ts: u64,
    /// The highest id of a segment only the archive holds.
    pub last_archived: Option<u64>,
    /// Segments the archive holds, with their objects' sizes.
    pub archived: Vec<(u64, u64)>,
    /// Archived copies of released segments still to delete: (segment, key).
    pub archive_deletes: Vec<(u64, String)>,
}

/// Merges the sealed local segments `used` (every one sealed by now) with the archive's
/// stubs at or above the mark; stubs below it are released segments whose objects are
/// still to delete.
pub fn merge_archived(
    fs: &dyn Fs,
    paths: &LogPaths,
    mark: ReleaseMark,
    used: &[Used],
) -> AofResult<Merged> {
    let mut last_ts = 0u64;
    // Segments the archive holds: their stubs (below the mark: released, their
    // objects still to delete).
    let (below, stubs): (Vec<_>, Vec<_>) = read_stubs(fs, paths)?
        .into_iter()
        .partition(|s| s.segment.header.segment_id < mark.first_segment);
    let archive_deletes = below
        .into_iter()
        .map(|s| (s.segment.header.segment_id, s.key))
        .collect();
    let mut archived = Vec::new();
    let mut sealed: Vec<(SealedSegment, PathBuf)> = Vec::with_capacity(used.len());
    for u in used {
        let footer = u.footer.expect("every used segment is sealed now");
        last_ts = last_ts.max(footer.sealed_at_ns);
        sealed.push((
            SealedSegment {
                header: u.header,
                seed: u.seed,
                footer,
                compressed: u.compressed,
                disk_bytes: u.disk_bytes,
                archived: false,
                local: true,
            },
            u.path.clone(),
        ));
    }
    for stub in stubs {
        let id = stub.segment.header.segment_id;
        let path = paths.stub(id);
        archived.push((id, stub.object_bytes));
        match sealed.binary_search_by_key(&id, |s| s.0.header.segment_id) {
            Ok(i) => {
                let local = &mut sealed[i].0;
                if local.header != stub.segment.header || local.footer != stub.segment.footer {
                    return Err(corruption(
                        &path,
                        id,
                        0,
                        "the archive stub describes another segment than the local file",
                    ));
                }
                local.archived = true;
            }
            Err(i) => {
                last_ts = last_ts.max(stub.segment.footer.sealed_at_ns);
                sealed.insert(i, (stub.segment, path));
            }
        }
    }
    let mut records_total = mark.first_record_index;
    for (s, path) in &sealed {
        let id = s.header.segment_id;
        // Ids may skip (a crash leaves blank files that are moved past), records may
        // not: each segment starts where the previous ended, which catches a lost file.
        if s.header.base_record_index != records_total {
            return Err(corruption(
                path,
                id,
                0,
                format!(
                    "segment starts at record {} but {} records come before it{}: \
                     records are missing (a segment file lost?)",
                    s.header.base_record_index,
                    records_total,
                    if records_total == mark.first_record_index && mark.first_segment > 0 {
                        format!(
                            " (the release mark says the log starts at segment {} with record {})",
                            mark.first_segment, mark.first_record_index
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        records_total = s.header.base_record_index + s.footer.record_count;
    }
    let last_archived = sealed
        .iter()
        .rev()
        .find(|s| !s.0.local)
        .map(|s| s.0.header.segment_id);
    Ok(Merged {
        sealed: sealed.into_iter().map(|s| s.0).collect(),
        records_total,
        last_ts,
        last_archived,
        archived,
        archive_deletes,
    })
}
