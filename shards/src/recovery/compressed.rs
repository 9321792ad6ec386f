//! Compressed segments (`<id>.zst`) at open. The swap from a raw segment to its
//! compressed file writes `<id>.zst.tmp`, syncs it, renames it into place, syncs the
//! directory, then removes `<id>.seg` and syncs again. So a crash leaves at most one
//! of: a temp file (dropped), both files (the `.zst` is kept only if it validates
//! whole, and then the raw file is removed; otherwise the `.zst` goes), or the `.zst`
//! alone (it must validate: there is no other copy).

use super::{corruption, io_err, Used};
use crate::compressed_format::CompressedSegment;
use crate::error::AofResult;
use crate::fs::{Fs, OpenMode};
use std::path::{Path, PathBuf};

/// What the compressed files of a segment directory ask recovery to do.
#[derive(Debug, Default)]
pub struct CompressedFindings {
    /// Files to remove: temps, `.zst` files that do not validate beside their raw
    /// segment, and `.zst` files of released segments.
    pub drop: Vec<PathBuf>,
    /// Raw segments a valid `.zst` replaced (removed once the directory is synced).
    pub superseded: Vec<PathBuf>,
}

/// Folds the `.zst` files `zsts` (id, path) into `used` (raw segments, id order), given
/// the release mark's `first_kept`. Reads only.
pub fn survey_compressed(
    fs: &dyn Fs,
    zsts: Vec<(u64, PathBuf)>,
    used: &mut Vec<Used>,
    first_kept: u64,
    findings: &mut CompressedFindings,
) -> AofResult<()> {
    for (id, path) in zsts {
        if id < first_kept {
            findings.drop.push(path);
            continue;
        }
        let raw = used.iter().position(|u| u.id == id);
        match read_compressed(fs, id, &path) {
            Ok(u) => match raw {
                Some(i) => {
                    findings.superseded.push(used[i].path.clone());
                    used[i] = u;
                }
                None => used.push(u),
            },
            // The raw copy stands: this is a swap a crash cut short.
            Err(e) if raw.is_some() => {
                log::warn!(
                    "aof2: {} does not validate ({e}); the raw segment is kept",
                    path.display()
                );
                findings.drop.push(path);
            }
            Err(e) => return Err(e),
        }
    }
    used.sort_by_key(|u| u.id);
    Ok(())
}

/// A compressed segment as a sealed `Used`, if it validates whole (trailer, index,
/// header, footer; chunks are checked when read).
fn read_compressed(fs: &dyn Fs, id: u64, path: &Path) -> AofResult<Used> {
    let file = fs
        .open(path, OpenMode::Read)
        .map_err(io_err("open", path))?;
    let map = file.map().map_err(io_err("map", path))?;
    let c = CompressedSegment::parse_at(&map)
        .map_err(|(at, e)| corruption(path, id, at, format!("compressed segment: {e}")))?;
    if c.header.segment_id != id || c.footer.segment_id != id {
        return Err(corruption(
            path,
            id,
            0,
            format!("compressed file holds segment {}", c.header.segment_id),
        ));
    }
    Ok(Used {
        id,
        path: path.to_path_buf(),
        header: c.header,
        seed: c.seed,
        footer: Some(c.footer),
        damaged_footer: None,
        compressed: true,
        disk_bytes: map.len() as u64,
    })
}
