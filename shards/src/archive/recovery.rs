//! Opening a log's archive records: its stubs (`archive/<id>.stub`), read before the
//! segment directory is reconciled, so segments only the archive holds keep their
//! place in the log; stubs a crash left half-written are removed.

use super::stub::{read_file, Stub};
use crate::error::{AofError, AofResult};
use crate::fs::{EntryKind, Fs};
use crate::layout::LogPaths;
use crate::recovery::{corruption, io_err};

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
