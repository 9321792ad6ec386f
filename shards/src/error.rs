//! The one error type of the engine and its public API.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the API.
pub type AofResult<T> = Result<T, AofError>;

/// What kind of capacity a `WouldBlock` ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WouldBlockKind {
    /// `max_unflushed_bytes` is reached: the append would have to wait for a sync.
    Admission,
    /// The record needs a new segment whose file is still being prepared.
    Rollover,
}

/// Every error the engine reports. Messages name the path, segment, offset or value involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AofError {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("fdatasync", "create lock file", ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The configuration cannot be used as given.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// Bytes on disk are not what the engine wrote; nothing was changed on disk.
    #[error("corruption in segment {segment} at offset {offset} of {path}: {reason}")]
    Corruption {
        /// The segment file.
        path: PathBuf,
        /// The segment id.
        segment: u64,
        /// Byte offset of the damaged structure in the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// A segment was written by a newer format version than this build reads.
    #[error("{path} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The version it was written with.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },

    /// A file in the segment directory that the engine did not create.
    #[error("unexpected file {path} in the segment directory (not written by aof2); move it away")]
    ForeignFile {
        /// The file.
        path: PathBuf,
    },

    /// A directory given to a reading tool does not hold an aof2 log.
    #[error("{path} is not an aof2 log: {reason}")]
    NotALog {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },

    /// Another `Aof`, in this process or another, has the directory open for writing.
    #[error("{path} is locked by another writer (one writer per root_dir)")]
    Locked {
        /// The log's directory.
        path: PathBuf,
    },

    /// A record larger than the largest segment allows.
    #[error("record of {len} bytes is larger than the {max} bytes a segment can hold (segment_max_bytes)")]
    RecordTooLarge {
        /// The record's length.
        len: usize,
        /// The largest record the configuration allows.
        max: usize,
    },

    /// A batch that cannot be appended as one: empty, or more than one segment holds.
    #[error("batch of {records} records ({bytes} bytes of frames) not appended: {reason}")]
    BadBatch {
        /// Records in the batch.
        records: usize,
        /// Their frames' total size.
        bytes: u64,
        /// Why it cannot be appended.
        reason: String,
    },

    /// The id does not name a record this log has handed out (past the tail, or another log's).
    #[error("record {rid} not found: {reason}")]
    RecordNotFound {
        /// The id, as `segment:offset`.
        rid: String,
        /// Why it does not name a record.
        reason: String,
    },

    /// The segment does not exist in this log (or holds nothing readable yet).
    #[error("segment {segment} not found in {path}")]
    SegmentNotFound {
        /// The log's directory.
        path: PathBuf,
        /// The segment id asked for.
        segment: u64,
    },

    /// The segment was released (`Aof::release_before` or retention): its records are
    /// gone for good. The log now starts at a later segment (`Aof::first_record`).
    #[error(
        "segment {segment} of {path} was released; the log now starts at segment {first_kept}"
    )]
    Released {
        /// The log's directory.
        path: PathBuf,
        /// The segment asked for.
        segment: u64,
        /// The first segment the log keeps.
        first_kept: u64,
    },

    /// The archive store failed, or returned what the log did not upload.
    #[error("archive ({store}): segment {segment} of {path} (object {key}): {reason}")]
    Archive {
        /// The log's directory.
        path: PathBuf,
        /// The store (never a credential).
        store: String,
        /// The segment.
        segment: u64,
        /// Its object's key.
        key: String,
        /// What went wrong.
        reason: String,
    },

    /// Segments the archive does not hold yet keep the log's directory too far past
    /// its retention bound: no new segment until uploads catch up.
    #[error(
        "{path}: {held_bytes} bytes of segments not yet in the archive ({store}) are kept past \
         the retention bound, more than archive_backlog_max_bytes ({limit}); no new segment \
         until uploads catch up (last upload error: {cause})"
    )]
    ArchiveBacklog {
        /// The log's directory.
        path: PathBuf,
        /// The store (never a credential).
        store: String,
        /// Bytes held past the bound.
        held_bytes: u64,
        /// `archive_backlog_max_bytes`.
        limit: u64,
        /// The last upload failure.
        cause: String,
    },

    /// Every segment id a `RecordId` can hold (2^32) has been used in this directory.
    #[error("log {path} has used every segment id a record id can hold (2^32): start a new log")]
    SegmentIdsExhausted {
        /// The log's directory.
        path: PathBuf,
    },

    /// A `try_` call would have had to wait.
    #[error("would block ({0:?})")]
    WouldBlock(WouldBlockKind),

    /// An earlier write or sync failed, or the log's shard thread failed; the log accepts
    /// nothing more until it is reopened.
    #[error("log {path} is poisoned by an earlier failure ({cause}); reopen it to recover")]
    Poisoned {
        /// The log's directory.
        path: PathBuf,
        /// The failure that poisoned it.
        cause: String,
    },

    /// The log or its manager was shut down.
    #[error("log {path} is closed")]
    Closed {
        /// The log's directory.
        path: PathBuf,
    },

    /// A blocking call was made on a shard thread, where waiting would deadlock.
    #[error("blocking call `{call}` made on shard thread {shard}; use the async variant")]
    WouldDeadlock {
        /// The blocking method called.
        call: &'static str,
        /// The shard whose thread it was called on.
        shard: usize,
    },

    /// A shard thread panicked or its io_uring ring failed beyond repair: every log on
    /// it is poisoned with this cause, and new logs go to the other shards.
    #[error("shard thread {shard} failed: {cause}")]
    ShardFailed {
        /// The shard's index.
        shard: usize,
        /// What happened (the panic message, or the ring's failure).
        cause: String,
    },

    /// A broken invariant (a bug) surfaced while the engine worked on this log: the log
    /// is poisoned with it; its shard and the other logs on it go on.
    #[error("log {path} hit an internal error (a broken invariant): {cause}")]
    Internal {
        /// The log's directory.
        path: PathBuf,
        /// What broke (the panic message).
        cause: String,
    },

    /// A shard number past the last one (`AofConfig::shard`, `spawn_on_shard`).
    #[error("there is no shard {shard}: the manager runs {shards} shard(s), numbered from 0")]
    NoSuchShard {
        /// The shard asked for.
        shard: usize,
        /// How many shards the manager runs.
        shards: usize,
    },

    /// A task spawned on a shard panicked (the shard went on).
    #[error("a task on shard {shard} {cause}")]
    TaskPanicked {
        /// The shard it ran on.
        shard: usize,
        /// The panic's message.
        cause: String,
    },

    /// A task spawned on a shard was dropped before it finished.
    #[error("a task on shard {shard} was dropped: {reason}")]
    TaskCancelled {
        /// The shard it ran on.
        shard: usize,
        /// Why.
        reason: String,
    },

    /// The manager could not start.
    #[error("cannot start the AOF manager: {0}")]
    Startup(String),
}

impl AofError {
    /// The kind of the operating system's error, for an `Io` error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            AofError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// Wraps an `io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> AofError {
        AofError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A copy for handing to every waiter of a poisoned log.
    pub(crate) fn poisoned(path: &std::path::Path, cause: &AofError) -> AofError {
        AofError::Poisoned {
            path: path.to_path_buf(),
            cause: cause.to_string(),
        }
    }

    /// True for `WouldBlock` errors.
    pub fn is_would_block(&self) -> bool {
        matches!(self, AofError::WouldBlock(_))
    }
}

/// A copy of an `io::Error` (which is not `Clone`), for reporting one failure twice:
/// the OS error code where there is one, else the kind and message.
pub(crate) fn copy_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}
