//! What readers see of a log: its sealed segments, the unsealed one up to its durable
//! end, and the catalogue. Read under the log's lock, briefly; nothing here changes it.

use super::LogCore;
use crate::format::{SegmentFooter, SegmentHeader};

/// What is known about a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedSegment {
    /// Its header.
    pub header: SegmentHeader,
    /// The header's checksum, which seeds every frame and the footer.
    pub seed: u32,
    /// Its seal footer.
    pub footer: SegmentFooter,
    /// Stored compressed (`<id>.zst`) rather than raw (`<id>.seg`).
    pub compressed: bool,
    /// Bytes its file takes in the directory: the `.zst` file's length when
    /// compressed, else the segment file's size (`header.file_size`); 0 once only the
    /// archive holds it.
    pub disk_bytes: u64,
    /// The archive holds it: its stub (`archive/<id>.stub`) is durable.
    pub archived: bool,
    /// A local copy is in the segment directory (`compressed` says which file); when
    /// false, only the archive holds it and readers hydrate it.
    pub local: bool,
}

/// A segment as readers see it (see [`LogCore::locate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// Sealed: immutable, readable up to its footer's data end.
    Sealed(SealedSegment),
    /// Being appended to (or awaiting its seal): readable up to `durable_end`.
    Unsealed {
        /// Its header.
        header: SegmentHeader,
        /// Its frame seed.
        seed: u32,
        /// Frames below this offset are durable.
        durable_end: u64,
    },
}

impl Located {
    /// The segment's id.
    pub fn segment_id(&self) -> u64 {
        match self {
            Located::Sealed(s) => s.header.segment_id,
            Located::Unsealed { header, .. } => header.segment_id,
        }
    }
}

/// One segment of a log, as `catalog_snapshot` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// Its id.
    pub segment_id: u64,
    /// True once its seal footer is durable (it never changes again).
    pub sealed: bool,
    /// Records in every segment before it.
    pub base_record_index: u64,
    /// Size of the segment file, uncompressed.
    pub file_size: u64,
    /// Stored compressed (`<id>.zst`, sealed segments only).
    pub compressed: bool,
    /// Bytes its file takes in the directory (the compressed file's length when
    /// compressed, else `file_size`; 0 when only the archive holds it).
    pub disk_bytes: u64,
    /// The archive holds it (sealed segments of a manager with an archive).
    pub archived: bool,
    /// A copy is in the log's directory (false: only the archive holds it, and a
    /// reader downloads it).
    pub local: bool,
    /// End of its durable frames (the data end, once sealed).
    pub durable_bytes: u64,
    /// Records in it (for an unsealed segment: appended so far, durable or not).
    pub record_count: u64,
    /// When it was created (ns since the Unix epoch).
    pub created_at_ns: u64,
}

impl LogCore {
    /// Sealed segments, in id order.
    pub fn sealed_segments(&self) -> &[SealedSegment] {
        &self.sealed
    }

    /// For a segment that is not sealed: (header, seed, durable end of its frames).
    pub fn unsealed_view(&self, id: u64) -> Option<(SegmentHeader, u32, u64)> {
        self.segs
            .iter()
            .find(|s| s.id == id && s.header_durable)
            .map(|s| (s.header, s.seed, s.durable_end))
    }

    /// The first segment readers can see whose id is `id` or more: sealed segments,
    /// and unsealed ones whose header is durable.
    pub fn locate(&self, id: u64) -> Option<Located> {
        let i = self.sealed.partition_point(|s| s.header.segment_id < id);
        if let Some(s) = self.sealed.get(i) {
            return Some(Located::Sealed(*s));
        }
        self.segs
            .iter()
            .find(|s| s.id >= id && s.header_durable)
            .map(|s| Located::Unsealed {
                header: s.header,
                seed: s.seed,
                durable_end: s.durable_end,
            })
    }

    /// The id of the first sealed segment from `from` on. If `from` was released
    /// since, `from` itself: a follower that fell behind a release then gets
    /// `Released` opening it, rather than skipping it unawares.
    pub fn sealed_from(&self, from: u64) -> Option<u64> {
        if from < self.rel.first_kept {
            return Some(from);
        }
        let i = self.sealed.partition_point(|s| s.header.segment_id < from);
        self.sealed.get(i).map(|s| s.header.segment_id)
    }

    /// The segment appends go to, once its header is durable.
    pub fn active_segment(&self) -> Option<u64> {
        self.segs
            .back()
            .filter(|s| s.header_durable && !s.rolled)
            .map(|s| s.id)
    }

    /// Every segment readers can see, in id order.
    pub fn catalog(&self) -> Vec<SegmentInfo> {
        let sealed = self.sealed.iter().map(|s| SegmentInfo {
            segment_id: s.header.segment_id,
            sealed: true,
            base_record_index: s.header.base_record_index,
            file_size: s.header.file_size,
            compressed: s.compressed,
            disk_bytes: s.disk_bytes,
            archived: s.archived,
            local: s.local,
            durable_bytes: s.footer.data_end,
            record_count: s.footer.record_count,
            created_at_ns: s.header.created_at_ns,
        });
        let open = self
            .segs
            .iter()
            .filter(|s| s.header_durable)
            .map(|s| SegmentInfo {
                segment_id: s.id,
                sealed: false,
                base_record_index: s.header.base_record_index,
                file_size: s.header.file_size,
                compressed: false,
                disk_bytes: s.header.file_size,
                archived: false,
                local: true,
                durable_bytes: s.durable_end,
                record_count: s.record_count,
                created_at_ns: s.header.created_at_ns,
            });
        sealed.chain(open).collect()
    }
}
