//! Where a log's files live and how they are named.
//!
//! ```text
//! <root_dir>/LOCK                       flock()ed by the one writer
//! <root_dir>/RELEASED                   the release mark: where the log starts (see
//!                                       `release_mark`); absent until a first release
//! <root_dir>/RELEASED.tmp               a release mark being written (removed at open)
//! <root_dir>/segments/<id:020>.seg        a segment (blank-headed when prepared, unused)
//! <root_dir>/segments/<id:020>.seg.tmp    a segment being prepared (removed at open)
//! <root_dir>/segments/<id:020>.seg.ready  a prepared segment a clean close proved unused
//! <root_dir>/segments/<id:020>.spare      a released segment's file kept for reuse (its
//!                                       contents are stale; named by its old id)
//! <root_dir>/segments/<id:020>.zst        a sealed segment, compressed (see
//!                                       `compressed_format`); replaces `<id>.seg`
//! <root_dir>/segments/<id:020>.zst.tmp    a compressed segment being written (removed at
//!                                       open)
//! ```

use std::path::{Path, PathBuf};

/// Name of the lock file in the root directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the segment directory in the root directory.
pub const SEGMENT_DIR: &str = "segments";
/// Name of the release mark in the root directory.
pub const RELEASED_FILE: &str = "RELEASED";
/// Name of a release mark being written, in the root directory.
pub const RELEASED_TMP: &str = "RELEASED.tmp";

/// File name of segment `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// File name of segment `id` while it is being prepared.
pub fn temp_file_name(id: u64) -> String {
    format!("{id:020}.seg.tmp")
}

/// File name of prepared segment `id` after a clean close (no id in it handed out).
pub fn ready_file_name(id: u64) -> String {
    format!("{id:020}.seg.ready")
}

/// File name of the spare file that was segment `id`.
pub fn spare_file_name(id: u64) -> String {
    format!("{id:020}.spare")
}

/// File name of compressed segment `id`.
pub fn compressed_file_name(id: u64) -> String {
    format!("{id:020}.zst")
}

/// File name of compressed segment `id` while it is written.
pub fn compressed_temp_name(id: u64) -> String {
    format!("{id:020}.zst.tmp")
}

/// What a name in the segment directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentName {
    /// `<id>.seg`: a segment (or a blank prepared file).
    Segment(u64),
    /// `<id>.seg.tmp`: a preparation that did not finish.
    Temp(u64),
    /// `<id>.seg.ready`: a prepared file a clean close proved unused.
    Ready(u64),
    /// `<id>.spare`: a released segment's file, kept for reuse.
    Spare(u64),
    /// `<id>.zst`: a sealed segment, compressed.
    Compressed(u64),
    /// `<id>.zst.tmp`: a compressed segment that was being written.
    CompressedTemp(u64),
}

/// Parses a name the engine itself creates; `None` for anything else.
pub fn parse_name(name: &str) -> Option<SegmentName> {
    type Make = fn(u64) -> SegmentName;
    let (digits, make): (&str, Make) = if let Some(d) = name.strip_suffix(".seg.tmp") {
        (d, SegmentName::Temp)
    } else if let Some(d) = name.strip_suffix(".seg.ready") {
        (d, SegmentName::Ready)
    } else if let Some(d) = name.strip_suffix(".seg") {
        (d, SegmentName::Segment)
    } else if let Some(d) = name.strip_suffix(".spare") {
        (d, SegmentName::Spare)
    } else if let Some(d) = name.strip_suffix(".zst.tmp") {
        (d, SegmentName::CompressedTemp)
    } else if let Some(d) = name.strip_suffix(".zst") {
        (d, SegmentName::Compressed)
    } else {
        return None;
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = digits.parse().ok()?;
    if id > u32::MAX as u64 {
        return None;
    }
    Some(make(id))
}

/// Paths of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPaths {
    /// `root_dir`.
    pub root: PathBuf,
    /// `root_dir/segments`.
    pub segments: PathBuf,
    /// `root_dir/LOCK`.
    pub lock: PathBuf,
    /// `root_dir/RELEASED`.
    pub released: PathBuf,
    /// `root_dir/RELEASED.tmp`.
    pub released_tmp: PathBuf,
    /// `root_dir/LOG_ID`: the log's archive id.
    pub log_id: PathBuf,
    /// `root_dir/archive`: stubs of archived segments.
    pub archive: PathBuf,
    /// `root_dir/hydrated`: archived segments downloaded for readers.
    pub hydrated: PathBuf,
}

impl LogPaths {
    /// The paths of the log in `root`.
    pub fn new(root: &Path) -> LogPaths {
        LogPaths {
            root: root.to_path_buf(),
            segments: root.join(SEGMENT_DIR),
            lock: root.join(LOCK_FILE),
            released: root.join(RELEASED_FILE),
            released_tmp: root.join(RELEASED_TMP),
            log_id: root.join("LOG_ID"),
            archive: root.join("archive"),
            hydrated: root.join("hydrated"),
        }
    }
    /// Segment `id`'s file.
    pub fn segment(&self, id: u64) -> PathBuf {
        self.segments.join(segment_file_name(id))
    }
    /// Segment `id`'s file while it is prepared.
    pub fn temp(&self, id: u64) -> PathBuf {
        self.segments.join(temp_file_name(id))
    }
    /// Segment `id`'s file after a clean close proved it unused.
    pub fn ready(&self, id: u64) -> PathBuf {
        self.segments.join(ready_file_name(id))
    }
    /// The spare file that was segment `id`.
    pub fn spare(&self, id: u64) -> PathBuf {
        self.segments.join(spare_file_name(id))
    }
    /// Segment `id`'s compressed file.
    pub fn compressed(&self, id: u64) -> PathBuf {
        self.segments.join(compressed_file_name(id))
    }
    /// Sealed segment `id`'s file: compressed (`.zst`) or raw (`.seg`).
    pub fn sealed(&self, id: u64, compressed: bool) -> PathBuf {
        if compressed {
            self.compressed(id)
        } else {
            self.segment(id)
        }
    }
    /// Segment `id`'s stub: the archive holds it.
    pub fn stub(&self, id: u64) -> PathBuf {
        self.archive.join(format!("{id:020}.stub"))
    }
    /// Segment `id`'s downloaded copy (`compressed`: of its `.zst` object).
    pub fn hydrated(&self, id: u64, compressed: bool) -> PathBuf {
        self.hydrated.join(if compressed {
            compressed_file_name(id)
        } else {
            segment_file_name(id)
        })
    }
    /// Segment `id`'s compressed file while it is written.
    pub fn compressed_temp(&self, id: u64) -> PathBuf {
        self.segments.join(compressed_temp_name(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_rejected() {
        assert_eq!(
            parse_name(&segment_file_name(42)),
            Some(SegmentName::Segment(42))
        );
        assert_eq!(parse_name(&temp_file_name(42)), Some(SegmentName::Temp(42)));
        assert_eq!(
            parse_name(&compressed_file_name(42)),
            Some(SegmentName::Compressed(42))
        );
        assert_eq!(
            parse_name(&compressed_temp_name(42)),
            Some(SegmentName::CompressedTemp(42))
        );
        assert_eq!(
            parse_name(&ready_file_name(42)),
            Some(SegmentName::Ready(42))
        );
        assert_eq!(
            parse_name(&spare_file_name(42)),
            Some(SegmentName::Spare(42))
        );
        for bad in [
            "42.seg",
            "notes.txt",
            "00000000000000000042.seg.bak",
            "0000000000000000004x.seg",
            "99999999999999999999.seg",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
