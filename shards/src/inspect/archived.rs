//! What the read-only tools see of segments only the archive holds: their stubs, and,
//! given the store, their objects fetched and checked.

use super::{check_sealed_bytes, Location, LogDir, SegmentStat};
use crate::archive::store::ArchiveBackend;
use crate::archive::stub::Stub;
use crate::error::AofResult;
use crate::reader::{SegmentCursor, SegmentReader};
use crate::recovery::{corruption, io_err};
use std::sync::Arc;

impl LogDir {
    /// Reads (and `verify` checks) segments only the archive holds from `store`.
    pub fn with_archive(mut self, store: Arc<dyn ArchiveBackend>) -> LogDir {
        self.archive = Some(store);
        self
    }

    /// Stubs of the archived segments the log keeps.
    pub fn stubs(&self) -> &[Stub] {
        &self.stubs
    }

    /// Segments only the archive holds (no local copy), with their stubs.
    pub fn archived_only(&self) -> Vec<&Stub> {
        self.stubs
            .iter()
            .filter(|s| {
                let id = s.segment.header.segment_id;
                !self.survey.used.iter().any(|u| u.id == id)
            })
            .collect()
    }

    /// The stat of an archived-only segment, from its stub.
    pub(super) fn archived_stat(&self, st: &Stub) -> SegmentStat {
        let s = &st.segment;
        SegmentStat {
            id: s.header.segment_id,
            path: self.paths.stub(s.header.segment_id),
            sealed: true,
            file_size: s.header.file_size,
            compressed: s.compressed,
            disk_bytes: 0,
            data_end: s.footer.data_end,
            records: s.footer.record_count,
            base_record_index: s.header.base_record_index,
            created_at_ns: s.header.created_at_ns,
            sealed_at_ns: Some(s.footer.sealed_at_ns),
            torn_tail: None,
            live: false,
            location: Location::Archive,
        }
    }

    /// A cursor over an archived-only segment: its object fetched and checked, kept in
    /// a temporary file only while it is mapped.
    pub fn archived_cursor(&self, st: &Stub) -> AofResult<SegmentCursor> {
        let bytes = self.archived_bytes(st)?;
        let id = st.segment.header.segment_id;
        let tmp = std::env::temp_dir().join(format!(
            "aof2-archived-{}-{id}-{}",
            std::process::id(),
            if st.segment.compressed { "zst" } else { "seg" }
        ));
        std::fs::write(&tmp, &bytes).map_err(io_err("write", &tmp))?;
        let r = if st.segment.compressed {
            SegmentReader::compressed(&self.fs, tmp.clone())
        } else {
            SegmentReader::sealed(&self.fs, tmp.clone(), st.segment)
        };
        // Mapped: the file can go now.
        let _ = std::fs::remove_file(&tmp);
        Ok(SegmentCursor::new(r?))
    }

    /// Local stats and archived-only ones, in id order.
    pub(super) fn merged(&self, local: Vec<SegmentStat>) -> Vec<SegmentStat> {
        let mut out = local;
        for st in &mut out {
            if self
                .stubs
                .iter()
                .any(|s| s.segment.header.segment_id == st.id)
            {
                st.location = Location::Both;
            }
        }
        for st in self.archived_only() {
            out.push(self.archived_stat(st));
        }
        out.sort_by_key(|s| s.id);
        out
    }

    /// An archived-only segment's object, fetched from the store and checked against
    /// its stub (size and SHA-256) and as a sealed segment.
    pub fn archived_bytes(&self, st: &Stub) -> AofResult<Vec<u8>> {
        let id = st.segment.header.segment_id;
        let path = self.paths.stub(id);
        let bad = |why: String| corruption(&path, id, 0, why);
        let Some(store) = &self.archive else {
            return Err(bad(format!(
                "segment {id} is held only by the archive (object {}); give the store \
                 (--archive-dir or --s3-bucket) to read it",
                st.key
            )));
        };
        let o = store
            .get(&st.key)
            .map_err(|e| bad(format!("{}: {e}", store.describe())))?;
        use sha2::Digest;
        let sum: [u8; 32] = sha2::Sha256::digest(&o.data).into();
        if sum != st.sha256 || o.data.len() as u64 != st.object_bytes {
            return Err(bad(format!(
                "object {} in the {} is not the one uploaded (SHA-256 {}, the stub records {})",
                st.key,
                store.describe(),
                crate::archive::stub::hex(&sum),
                crate::archive::stub::hex(&st.sha256)
            )));
        }
        check_sealed_bytes(&path, &st.segment, &o.data)?;
        Ok(o.data)
    }
}
