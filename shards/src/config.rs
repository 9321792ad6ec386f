//! Configuration of a log (`AofConfig`) and of the shard threads (`AofManagerConfig`),
//! and the identifiers records and segments are named by.

pub use crate::archive::config::{ArchiveStore, S3Config, S3Credentials, Secret};
use crate::error::{AofError, AofResult};
use crate::format;
use std::path::PathBuf;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Smallest segment `normalized()` allows.
pub const MIN_SEGMENT_BYTES: u64 = 64 * KIB;
/// Largest segment `normalized()` allows (record offsets are 32-bit).
pub const MAX_SEGMENT_BYTES: u64 = GIB;

/// Identifies a record: segment index in the high 32 bits, byte offset of its frame in
/// the segment in the low 32. Ids sort in append order; they are not dense.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(u64);

impl RecordId {
    /// Builds an id from its parts.
    pub const fn from_parts(segment_index: u32, segment_offset: u32) -> RecordId {
        RecordId(((segment_index as u64) << 32) | segment_offset as u64)
    }
    /// Rebuilds an id from `as_u64`.
    pub const fn from_u64(raw: u64) -> RecordId {
        RecordId(raw)
    }
    /// The index of the segment holding the record.
    pub const fn segment_index(&self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The byte offset of the record's frame in its segment.
    pub const fn segment_offset(&self) -> u32 {
        self.0 as u32
    }
    /// The raw 64-bit value.
    pub const fn as_u64(&self) -> u64 {
        self.0
    }
}

impl std::fmt::Debug for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RecordId({}:{})",
            self.segment_index(),
            self.segment_offset()
        )
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment_index(), self.segment_offset())
    }
}

/// Identifies a segment of a log. Ids increase and are never reused; they are dense
/// from 0 across clean closes and may skip a number after a crash (see docs/design.md,
/// "Segments and ids").
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegmentId(u64);

impl SegmentId {
    /// Wraps a segment index.
    pub const fn new(id: u64) -> SegmentId {
        SegmentId(id)
    }
    /// The raw index.
    pub const fn as_u64(&self) -> u64 {
        self.0
    }
    /// The id after this one.
    pub const fn next(&self) -> SegmentId {
        SegmentId(self.0 + 1)
    }
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// When appended data is written and synced. Every trigger syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushConfig {
    /// Start a write and `fdatasync` once this many bytes are unflushed (default 8 MiB).
    pub flush_watermark_bytes: u64,
    /// Write and sync data that has been unflushed this long, with no further calls
    /// (default 5 ms; 0 disables the timer).
    pub flush_interval_ms: u64,
    /// Appended-but-not-yet-synced bytes above which appends wait (default 64 MiB). A
    /// record is always admitted when nothing is unflushed.
    pub max_unflushed_bytes: u64,
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            flush_watermark_bytes: 8 * MIB,
            flush_interval_ms: 5,
            max_unflushed_bytes: 64 * MIB,
        }
    }
}

/// Compression of sealed segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Segments are stored as written.
    #[default]
    None,
    /// Sealed segments are compressed with zstd (at [`AofConfig::compression_level`])
    /// by a background worker at a low priority, never on a shard; readers see no
    /// difference (see docs/operations.md, "Compression").
    Zstd,
}

/// Who writes and syncs the records a blocking `flush_until` or `flush` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CommitMode {
    /// The default: [`CommitMode::Shard`] for a log placed on a chosen shard
    /// (`AofConfig::shard = Some(_)`, the shape of a log written by tasks on that
    /// shard: they never wait on a foreign thread holding the log's commit), else
    /// [`CommitMode::Caller`]. `AofConfig::normalized` (and so `Aof::config`) says
    /// which one is in effect.
    #[default]
    Auto,
    /// The waiting thread commits itself when no write + sync of the log is in flight:
    /// it writes everything appended so far and syncs it (on io_uring through a small
    /// ring of its own), and its completion releases every waiter it covers; threads
    /// arriving meanwhile wait for it, and the next one commits what came after
    /// (leader/follower). No hand-off to the shard thread and back. Headers, seals,
    /// rolls, preparation, interval and watermark flushes and async waiters stay the
    /// shard's. Where a caller cannot get a ring (the bound on caller rings, memlock),
    /// it uses the shard.
    Caller,
    /// Every write and sync runs on the log's shard thread; waiters wait for it.
    Shard,
}

/// Which sealed segments are kept. Retention is the operator's explicit choice: `Time`
/// and `Size` release sealed segments (oldest first, never the active one) whether or
/// not anyone has read them, as Kafka does. A service that must not lose unconsumed
/// records keeps `KeepAll` and calls `Aof::release_before` once they are consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RetentionPolicy {
    /// Every segment is kept until `release_before` releases it.
    #[default]
    KeepAll,
    /// A sealed segment is released once its newest record is older than `ttl_seconds`.
    /// Segments written in this session measure that age on the monotonic clock from
    /// the newest record's append (a step of the wall clock neither releases early nor
    /// never); segments found at open, from the wall-clock time their footer says they
    /// were sealed (at or after that append). The active segment is sealed after
    /// `AofConfig::segment_max_age_seconds` (default: the ttl), so a slow log expires too.
    Time {
        /// Age of a segment's newest record after which the segment is released.
        ttl_seconds: u64,
    },
    /// Sealed segments are released, oldest first, while their files total more than
    /// `max_total_bytes`. On disk the log then takes at most `max_total_bytes` plus the
    /// active segment, the prepared next one, the spares and one file being removed
    /// (docs/operations.md, "Retention and release").
    Size {
        /// Bytes of sealed segment files to keep at most.
        max_total_bytes: u64,
    },
}

/// Configuration of one log. Build it from `Default` and assign fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AofConfig {
    /// Directory of the log: `LOCK` and `segments/` live in it. Created if missing.
    /// Default: `aof2-data`, relative to the working directory.
    pub root_dir: PathBuf,
    /// Size of a log's first segment file in each session (default 1 MiB): a small log
    /// never needs more.
    pub segment_min_bytes: u64,
    /// Size segment files grow to (default 16 MiB): later segments are sized to fill in
    /// about ten seconds at the rate the last one filled, up to this. The log rolls to a
    /// new segment when the next record does not fit.
    pub segment_target_bytes: u64,
    /// Prepare the log's first segment file as soon as it opens, when it has none a
    /// first append would continue, instead of at its first append (default `false`).
    /// On: an append made a few milliseconds after the open does not wait for the
    /// file (zero-writing `segment_min_bytes`, syncing it and its directories: about
    /// 2 ms on the machine measured), at the cost of that file for a log opened and
    /// never written (kept `.ready` for the next session), and of the zero-writes of
    /// every log opened at once landing together.
    pub preallocate_segments: bool,
    /// Largest segment file: a record too large for a target-sized segment gets a
    /// segment of its own up to this size; larger records are refused (default 256 MiB).
    pub segment_max_bytes: u64,
    /// Flush triggers and back-pressure.
    pub flush: FlushConfig,
    /// Compression of sealed segments.
    pub compression: Compression,
    /// The zstd level of [`Compression::Zstd`] (default 3; 1 to 19: higher is smaller
    /// and slower to write, about as fast to read).
    pub compression_level: i32,
    /// Which sealed segments are kept.
    pub retention: RetentionPolicy,
    /// Who writes and syncs for a thread that waits for durability (default
    /// [`CommitMode::Auto`]).
    pub commit: CommitMode,
    /// The shard the log lives on: `None` (the default) for the working shard with the
    /// fewest logs; `Some(i)` for shard `i`, where tasks spawned with
    /// `AofManager::spawn_on_shard(i, ..)` append to it with no thread hop. A shard
    /// past the last is an error at `Aof::new` (`AofError::NoSuchShard`).
    pub shard: Option<usize>,
    /// The spare pool's bound: released segment files of up to `spare_segments` x
    /// `segment_target_bytes` bytes in all are kept for reuse as later segments, which
    /// then need no zero-writing; only sizes a new segment can use are kept (default 2;
    /// 0 removes every released file).
    pub spare_segments: usize,
    /// Seal the active segment once it is this old (it holds a record this old), so
    /// time-based retention reaches a log that writes slowly. `None` (the default): the
    /// ttl of `RetentionPolicy::Time`, never under the other policies.
    pub segment_max_age_seconds: Option<u64>,
    /// Permission bits of every file the engine creates for this log (segments, the
    /// lock, temporary and prepared files), default `0o600`: owner only. Directories it
    /// creates (`root_dir` and missing parents, `segments/`) get the same bits plus
    /// search (`x`) wherever read is set, so `0o600` gives `0o700` and `0o640` gives
    /// `0o750`. As with `open(2)`, the process umask still clears bits. Existing files
    /// and directories keep their modes. Must include owner read and write (`0o600`).
    pub file_mode: u32,
    /// With an archive ([`AofManagerConfig::archive`]): which archived copies are kept
    /// (default `KeepAll`). What it drops is released for good, local copy and all, as
    /// `Aof::release_before` would; `retention` governs the local copies only.
    pub archive_retention: RetentionPolicy,
    /// With an archive: bytes of archived segments a log keeps in its directory
    /// (`hydrated/`) after readers downloaded them, least recently used dropped first
    /// (default 256 MiB). They never count against `retention`.
    pub hydrated_cache_bytes: u64,
    /// With an archive: how far the segments the store does not hold yet may push the
    /// local copies past `retention` while uploads fail or lag (default 4 GiB). Past
    /// it, an append that needs a new segment fails with `AofError::ArchiveBacklog`,
    /// naming the store; appends resume once uploads catch up.
    pub archive_backlog_max_bytes: u64,
}

impl Default for AofConfig {
    fn default() -> Self {
        AofConfig {
            root_dir: PathBuf::from("aof2-data"),
            segment_min_bytes: MIB,
            segment_target_bytes: 16 * MIB,
            segment_max_bytes: 256 * MIB,
            preallocate_segments: false,
            flush: FlushConfig::default(),
            compression: Compression::None,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            retention: RetentionPolicy::KeepAll,
            commit: CommitMode::default(),
            shard: None,
            spare_segments: 2,
            segment_max_age_seconds: None,
            file_mode: DEFAULT_FILE_MODE,
            archive_retention: RetentionPolicy::KeepAll,
            hydrated_cache_bytes: 256 * MIB,
            archive_backlog_max_bytes: 4 * GIB,
        }
    }
}

/// Default [`AofConfig::compression_level`].
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// Default [`AofConfig::file_mode`]: owner read and write only.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// The mode of a directory the engine creates, from a file mode: search (`x`) added
/// wherever read is set (`0o600` -> `0o700`, `0o640` -> `0o750`).
pub const fn dir_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 2)
}

fn pow2_clamp(v: u64, lo: u64, hi: u64) -> u64 {
    v.clamp(lo, hi).next_power_of_two().min(hi)
}

impl AofConfig {
    /// Clamps sizes into their allowed ranges (64 KiB to 1 GiB, min <= target <= max),
    /// rounds them up to powers of two, and bounds the flush settings. Never fails.
    pub fn normalized(mut self) -> Self {
        let min = pow2_clamp(self.segment_min_bytes, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        let max = pow2_clamp(self.segment_max_bytes, min, MAX_SEGMENT_BYTES);
        let target = pow2_clamp(self.segment_target_bytes, min, max);
        self.segment_min_bytes = min;
        self.segment_max_bytes = max;
        self.segment_target_bytes = target;
        let f = &mut self.flush;
        f.max_unflushed_bytes = f.max_unflushed_bytes.clamp(64 * KIB, 64 * GIB);
        f.flush_watermark_bytes = f
            .flush_watermark_bytes
            .clamp(4 * KIB, f.max_unflushed_bytes);
        f.flush_interval_ms = f.flush_interval_ms.min(3_600_000);
        if self.commit == CommitMode::Auto {
            self.commit = match self.shard {
                Some(_) => CommitMode::Shard,
                None => CommitMode::Caller,
            };
        }
        self
    }

    /// Rejects configurations whose values contradict each other (rather than guessing).
    pub fn validate(&self) -> AofResult<()> {
        let bad = |m: String| Err(AofError::InvalidConfig(m));
        if self.compression == Compression::Zstd && !cfg!(feature = "zstd") {
            return bad(format!(
                "{}: compression = Zstd needs the `zstd` cargo feature of bop-rs (on by default)",
                self.root_dir.display()
            ));
        }
        if self.root_dir.as_os_str().is_empty() {
            return bad("root_dir is empty".into());
        }
        for (name, v) in [
            ("segment_min_bytes", self.segment_min_bytes),
            ("segment_target_bytes", self.segment_target_bytes),
            ("segment_max_bytes", self.segment_max_bytes),
            ("flush.max_unflushed_bytes", self.flush.max_unflushed_bytes),
            (
                "flush.flush_watermark_bytes",
                self.flush.flush_watermark_bytes,
            ),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if self.segment_min_bytes > self.segment_max_bytes {
            return bad(format!(
                "segment_min_bytes ({}) is larger than segment_max_bytes ({})",
                self.segment_min_bytes, self.segment_max_bytes
            ));
        }
        if self.segment_target_bytes < self.segment_min_bytes
            || self.segment_target_bytes > self.segment_max_bytes
        {
            return bad(format!(
                "segment_target_bytes ({}) is outside [segment_min_bytes ({}), segment_max_bytes ({})]",
                self.segment_target_bytes, self.segment_min_bytes, self.segment_max_bytes
            ));
        }
        if self.flush.flush_watermark_bytes > self.flush.max_unflushed_bytes {
            return bad(format!(
                "flush.flush_watermark_bytes ({}) is larger than flush.max_unflushed_bytes ({}): \
                 appends would block before a flush starts",
                self.flush.flush_watermark_bytes, self.flush.max_unflushed_bytes
            ));
        }
        if self.file_mode & !0o777 != 0 || self.file_mode & 0o600 != 0o600 {
            return bad(format!(
                "file_mode ({:#o}) must be permission bits (at most 0o777) including owner \
                 read and write (0o600)",
                self.file_mode
            ));
        }
        if !(1..=19).contains(&self.compression_level) {
            return bad(format!(
                "compression_level ({}) must be a zstd level from 1 to 19",
                self.compression_level
            ));
        }
        match self.retention {
            RetentionPolicy::Time { ttl_seconds: 0 } => {
                return bad(
                    "retention Time { ttl_seconds: 0 } would release every segment as \
                     soon as it is sealed"
                        .into(),
                )
            }
            RetentionPolicy::Size { max_total_bytes: 0 } => {
                return bad(
                    "retention Size { max_total_bytes: 0 } would release every segment \
                     as soon as it is sealed"
                        .into(),
                )
            }
            _ => {}
        }
        if self.segment_max_age_seconds == Some(0) {
            return bad("segment_max_age_seconds is 0".into());
        }
        if self.flush.flush_interval_ms > 3_600_000 {
            return bad(format!(
                "flush.flush_interval_ms ({}) is over an hour",
                self.flush.flush_interval_ms
            ));
        }
        Ok(())
    }

    /// The largest payload a segment can hold under this (normalized) configuration.
    pub fn max_record_bytes(&self) -> usize {
        let usable = format::data_capacity(self.segment_max_bytes) as usize - format::HEADER_LEN;
        usable - format::FRAME_HEADER_LEN - (usable % format::FRAME_ALIGN)
    }
}

/// Configuration of the shard threads.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AofManagerConfig {
    /// Number of shard threads; 0 (the default) starts one per CPU in the process's
    /// affinity set (`sched_getaffinity`), at most as many as its cgroup's CPU quota
    /// allows (`cpu.max`, or `cpu.cfs_quota_us` on cgroup v1), rounded up.
    pub shards: usize,
    /// Pin each shard thread to one CPU of the affinity set (default true). A pin that
    /// fails is logged as a warning and the thread runs unpinned.
    pub pin_shards: bool,
    /// The I/O backend of the shard threads (default [`IoBackend::Auto`]).
    pub backend: IoBackend,
    /// Log buffers per shard registered with its io_uring ring, in bytes (default 8 MiB,
    /// rounded down to whole 1 MiB buffers; 0 registers none). Writes from registered
    /// memory skip per-operation page pinning. The memory is allocated and pinned when
    /// the first log is placed on the shard (a shard with no log holds none; metric
    /// `ShardStats::arena_bytes`), and is charged to `RLIMIT_MEMLOCK` unless the process has
    /// `CAP_IPC_LOCK`; where that refuses it, the ring runs with unregistered buffers.
    pub registered_buffer_bytes: u64,
    /// With polling on (`completion_poll_us` above 0) and the shards on io_uring, at
    /// most this many threads get an io_uring ring of their own for committing their
    /// appends ([`CommitMode::Caller`]), which they poll; threads past the bound commit
    /// through the shard (default 64). Each ring is small (8 entries) and goes when its
    /// thread exits. Without polling a committing caller needs no ring: it makes the
    /// system calls itself.
    pub caller_rings: usize,
    /// io_uring features the shards must not use even where the kernel has them
    /// (default: none). Each has a plain path (see [`UringFeature`]), so this makes a
    /// new kernel behave like an older one: the test suite runs the paths of every
    /// kernel from 5.15 this way, and it can route around a kernel bug.
    pub io_uring_disable: Vec<UringFeature>,
    /// Tier 0: memory for inflated chunks of compressed segments, shared by every log
    /// of the manager, least recently used out (default 64 MiB; 0 keeps none). Held only
    /// once `read_record` reads compressed segments; cursors and streams bypass it.
    pub tier0_cache_bytes: u64,
    /// What runs each shard's loop (default [`ShardExecutor::Threads`]). With
    /// `Threads` (the default) the environment variable `AOF2_EXECUTOR=threads|glommio`
    /// decides instead (the test suite runs on glommio this way).
    pub executor: ShardExecutor,
    /// Opt-in polling: a thread that waits for its I/O (a shard thread waiting for
    /// completions, or a caller waiting for the commit it runs) first polls its ring's
    /// completion queue for up to this many microseconds, and sleeps only if nothing
    /// completed by then (default 0: sleep at once). A CPU that stays busy answers a
    /// completion sooner than an idle one wakes up, at the price of burning up to this
    /// long per wait; docs/benchmarks.md (W2P) measures what it buys. Shards on
    /// glommio wait in glommio and do not poll.
    pub completion_poll_us: u32,
    /// Tier 2: where sealed segments are archived (default `None`: no archive, and
    /// [`AofConfig::retention`] releases what it drops). With a store, every log of the
    /// manager uploads each sealed segment in the background (its compressed file
    /// when compression is on), `retention` only drops local copies the store holds,
    /// and readers download the others when they need them (docs/operations.md,
    /// "The archive").
    pub archive: Option<ArchiveStore>,
}

/// What runs a shard's loop and the tasks spawned onto it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ShardExecutor {
    /// A plain pinned thread per shard, sleeping in its io_uring ring (or parked, on
    /// the portable backend). Tasks may await the engine's futures and any future that
    /// needs no runtime.
    #[default]
    Threads,
    /// Each shard runs as a glommio `LocalExecutor` pinned to its CPU (cargo feature
    /// `glommio`): tasks spawned onto it may use all of glommio (timers, channels,
    /// networking). The engine keeps its own io_uring ring, whose completions reach
    /// glommio's reactor through an eventfd. Needs io_uring (no portable fallback),
    /// the opcodes glommio uses (Linux 5.8 or later) and `RLIMIT_MEMLOCK` of at least
    /// 512 KiB for glommio (the engine's registered buffers on top, where the limit
    /// allows; otherwise they are unregistered); `AofManager::with_config` checks these
    /// first and fails with a clear error instead of letting glommio panic or exit.
    #[cfg(feature = "glommio")]
    Glommio,
}

impl ShardExecutor {
    /// True for `Glommio` (false in a build without the `glommio` feature).
    pub fn is_glommio(self) -> bool {
        self != ShardExecutor::Threads
    }

    /// `Threads` is overridden by `AOF2_EXECUTOR` (`threads` or `glommio`).
    pub fn resolve(self) -> Result<ShardExecutor, AofError> {
        if self != ShardExecutor::Threads {
            return Ok(self);
        }
        match std::env::var("AOF2_EXECUTOR").as_deref() {
            Ok("") | Ok("threads") | Err(_) => Ok(ShardExecutor::Threads),
            #[cfg(feature = "glommio")]
            Ok("glommio") => Ok(ShardExecutor::Glommio),
            #[cfg(not(feature = "glommio"))]
            Ok("glommio") => Err(AofError::InvalidConfig(
                "AOF2_EXECUTOR=\"glommio\": this build of bop-rs lacks the `glommio` cargo feature"
                    .into(),
            )),
            Ok(v) => Err(AofError::InvalidConfig(format!(
                "AOF2_EXECUTOR={v:?}: expected threads or glommio"
            ))),
        }
    }
}

/// An optional io_uring feature. The ring probes what the kernel has when it is
/// created and uses only that; each feature has a plain path used without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UringFeature {
    /// `IORING_SETUP_SINGLE_ISSUER` (Linux 6.0): only the shard thread submits, so the
    /// kernel skips its locking. Without it: a plain ring.
    SingleIssuer,
    /// `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1, needs `SingleIssuer`): completions are
    /// processed only when the shard enters the kernel. Without it: as task work.
    DeferTaskrun,
    /// `IORING_REGISTER_PROBE` (Linux 5.6): the list of opcodes. Without it, only the
    /// opcodes Linux 5.5 has are used.
    Probe,
    /// `IORING_OP_WRITE` (Linux 5.6). Without it: `WRITEV` with one iovec.
    Write,
    /// `IORING_OP_READ` (Linux 5.6), for the wake-up eventfd. Without it: `READV`.
    Read,
    /// Registered buffers (`IORING_REGISTER_BUFFERS`, Linux 5.1). Without them: plain
    /// writes, which pin their pages per operation.
    RegisteredBuffers,
    /// `IORING_OP_WRITE_FIXED` (Linux 5.1): one piece from registered memory. Without
    /// it: `WRITE`.
    WriteFixed,
    /// `IORING_OP_WRITEV_FIXED` (Linux 6.15): several pieces from registered memory.
    /// Without it: `WRITEV`.
    WritevFixed,
    /// A write and the `fdatasync` after it, into a file holding no other unsynced
    /// write, go out as one `RWF_DSYNC` write (every kernel with io_uring has it).
    /// Without it: the write and an `FSYNC` linked to it, two operations.
    DsyncWrite,
}

impl Default for AofManagerConfig {
    fn default() -> Self {
        AofManagerConfig {
            shards: 0,
            pin_shards: true,
            backend: IoBackend::Auto,
            registered_buffer_bytes: 8 << 20,
            caller_rings: 64,
            io_uring_disable: Vec::new(),
            tier0_cache_bytes: 64 << 20,
            executor: ShardExecutor::default(),
            completion_poll_us: 0,
            archive: None,
        }
    }
}

/// Which I/O backend the shard threads use.
///
/// With `Auto`, the environment variable `AOF2_BACKEND` (`auto`, `uring` or `sync`)
/// decides, so a deployment (or CI) can force one without a code change; an explicit
/// `Uring` or `Sync` in the configuration wins over the variable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoBackend {
    /// io_uring where the kernel allows it; where `io_uring_setup` fails (a seccomp
    /// profile, `kernel.io_uring_disabled`, an old kernel), the portable backend, with
    /// a logged warning and the `aof_io_uring_fallback` metric set.
    #[default]
    Auto,
    /// io_uring, or a clear error from `AofManager::with_config` (strict).
    Uring,
    /// The portable backend: the blocking executor (`exec::blocking`), `pwritev` and
    /// `fdatasync` as system calls on the shard threads.
    Sync,
}

impl IoBackend {
    /// Parses `auto`, `uring` or `sync` (the values of `AOF2_BACKEND`).
    pub fn parse(s: &str) -> Option<IoBackend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(IoBackend::Auto),
            "uring" | "io_uring" => Some(IoBackend::Uring),
            "sync" => Some(IoBackend::Sync),
            _ => None,
        }
    }

    /// The backend to start: `self`, or for `Auto` the `AOF2_BACKEND` variable if set.
    pub fn resolve(self) -> Result<IoBackend, AofError> {
        if self != IoBackend::Auto {
            return Ok(self);
        }
        match std::env::var("AOF2_BACKEND") {
            Ok(v) if !v.is_empty() => IoBackend::parse(&v).ok_or_else(|| {
                AofError::InvalidConfig(format!("AOF2_BACKEND={v:?}: expected auto, uring or sync"))
            }),
            _ => Ok(IoBackend::Auto),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_id_packs_segment_and_offset() {
        let r = RecordId::from_parts(7, 4096);
        assert_eq!((r.segment_index(), r.segment_offset()), (7, 4096));
        assert_eq!(RecordId::from_u64(r.as_u64()), r);
        assert!(RecordId::from_parts(1, 0) > RecordId::from_parts(0, u32::MAX));
        assert_eq!(r.to_string(), "7:4096");
    }

    #[test]
    fn normalized_rounds_to_powers_of_two_and_orders_sizes() {
        let mut c = AofConfig::default();
        c.segment_min_bytes = 3000;
        c.segment_target_bytes = 5 * MIB;
        c.segment_max_bytes = 100 * GIB;
        c.flush.flush_watermark_bytes = 1 << 40;
        let n = c.normalized();
        assert_eq!(n.segment_min_bytes, MIN_SEGMENT_BYTES);
        assert_eq!(n.segment_target_bytes, 8 * MIB);
        assert_eq!(n.segment_max_bytes, MAX_SEGMENT_BYTES);
        assert!(n.flush.flush_watermark_bytes <= n.flush.max_unflushed_bytes);
        assert_eq!(n.clone().normalized(), n);
    }

    #[test]
    fn validate_names_the_contradiction() {
        let mut c = AofConfig::default();
        c.segment_min_bytes = 64 * MIB;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("segment_min_bytes"), "{e}");
        let mut c = AofConfig::default();
        c.root_dir = PathBuf::new();
        assert!(c.validate().unwrap_err().to_string().contains("root_dir"));
        let mut c = AofConfig::default();
        c.flush.flush_watermark_bytes = c.flush.max_unflushed_bytes + 1;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("flush_watermark_bytes"));
        assert!(AofConfig::default().validate().is_ok());
        let mut c = AofConfig::default();
        c.compression_level = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("compression_level (0)"), "{e}");
    }

    #[test]
    fn max_record_fits_in_max_segment() {
        let c = AofConfig::default().normalized();
        let frame = format::frame_size(c.max_record_bytes()) as u64;
        assert!(format::HEADER_LEN as u64 + frame <= format::data_capacity(c.segment_max_bytes));
        let frame = format::frame_size(c.max_record_bytes() + 8) as u64;
        assert!(format::HEADER_LEN as u64 + frame > format::data_capacity(c.segment_max_bytes));
    }
}
