//! The I/O operations the log core asks an executor to perform.

use crate::buffer::{zero_chunk, AlignedBuf};
use std::path::PathBuf;
use std::sync::Arc;

/// Bytes for one piece of a write.
pub enum IoData {
    /// A finished range of a log buffer (below the append end: no appender touches it).
    Buf {
        /// The buffer.
        buf: Arc<AlignedBuf>,
        /// Offset of the range in the buffer.
        off: usize,
        /// Length of the range.
        len: usize,
    },
    /// A block owned by the operation: a bounce copy of the partial last block, a
    /// header or a footer.
    Owned(AlignedBuf),
    /// Zeros from the shared preparation chunk.
    Zeros(usize),
}

impl IoData {
    /// The bytes to write.
    pub fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: the log core hands out only ranges below the append end it
            // snapshotted under the log lock; appenders never write there again.
            IoData::Buf { buf, off, len } => unsafe { buf.slice(*off, *len) },
            // SAFETY: the operation owns this block exclusively.
            IoData::Owned(b) => unsafe { b.slice(0, b.len()) },
            // SAFETY: the zero chunk is never written after initialisation.
            IoData::Zeros(n) => unsafe { zero_chunk().slice(0, *n) },
        }
    }

    /// Bytes in this piece.
    pub fn len(&self) -> usize {
        match self {
            IoData::Buf { len, .. } => *len,
            IoData::Owned(b) => b.len(),
            IoData::Zeros(n) => *n,
        }
    }

    /// True for an empty piece.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One operation. Files are named by segment id; the backend keeps the handles.
pub enum OpKind {
    /// Create `path` (must not exist) with permission bits `mode` and keep it open as
    /// segment `seg`.
    #[allow(missing_docs)]
    Create { seg: u64, path: PathBuf, mode: u32 },
    /// Open the existing `path` as segment `seg`.
    #[allow(missing_docs)]
    Open { seg: u64, path: PathBuf },
    /// Write `data` back to back at `offset` of segment `seg`.
    #[allow(missing_docs)]
    Write {
        seg: u64,
        offset: u64,
        data: Vec<IoData>,
    },
    /// `fdatasync` segment `seg`.
    #[allow(missing_docs)]
    Sync { seg: u64 },
    /// Close segment `seg`'s handle.
    #[allow(missing_docs)]
    Close { seg: u64 },
    /// Rename within the segment directory (replacing `to` if it exists).
    #[allow(missing_docs)]
    Rename { from: PathBuf, to: PathBuf },
    /// Rename `from` to `to` as a step that may be retried: `from` missing with `to`
    /// in place means an earlier attempt did it, which is success.
    #[allow(missing_docs)]
    Retire { from: PathBuf, to: PathBuf },
    /// `fsync` a directory so creates, renames and unlinks in it are durable.
    #[allow(missing_docs)]
    SyncDir { path: PathBuf },
    /// Remove a file the engine left behind (a missing file is not an error).
    #[allow(missing_docs)]
    Unlink { path: PathBuf },
}

impl std::fmt::Debug for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpKind::Create { seg, .. } => write!(f, "Create({seg})"),
            OpKind::Open { seg, .. } => write!(f, "Open({seg})"),
            OpKind::Write { seg, offset, data } => {
                let n: usize = data.iter().map(|d| d.len()).sum();
                write!(f, "Write({seg} @{offset} +{n})")
            }
            OpKind::Sync { seg } => write!(f, "Sync({seg})"),
            OpKind::Close { seg } => write!(f, "Close({seg})"),
            OpKind::Rename { from, to } => {
                write!(f, "Rename({} -> {})", from.display(), to.display())
            }
            OpKind::Retire { from, to } => {
                write!(f, "Retire({} -> {})", from.display(), to.display())
            }
            OpKind::SyncDir { path } => write!(f, "SyncDir({})", path.display()),
            OpKind::Unlink { path } => write!(f, "Unlink({})", path.display()),
        }
    }
}

/// An operation with the id its completion is reported under.
#[derive(Debug)]
pub struct Op {
    /// Reported back with the completion.
    pub id: u64,
    /// What to do.
    pub kind: OpKind,
}

/// Operations run in order; once one fails, the rest are cancelled (reported as
/// failed without running), as an io_uring link chain would do.
#[derive(Debug, Default)]
pub struct Chain {
    /// The operations, in order.
    pub ops: Vec<Op>,
}
