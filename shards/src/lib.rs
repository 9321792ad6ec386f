#![warn(missing_docs)]
// Tests build configs by assigning fields, as the specification's users do.
#![cfg_attr(test, allow(clippy::field_reassign_with_default))]
//! The AOF2 engine: on-disk format, log core, recovery, executors, shards. The public
//! API is the `bop_rs::aof2` facade; this crate is its engine. ARCHITECTURE.md (at the
//! repository's top) walks the layers and the path of one append.
//!
//! Layers, data flowing one way:
//! - [`mod@format`]: pure encoding and decoding of segments and frames.
//! - [`log`]: the sans-I/O state machine of one log (policy lives here).
//! - [`fs`]: the file-system seam (`posix` real disk, `sim` crash simulator).
//! - [`exec`]: executors that run the log core's operation chains (blocking, or on a
//!   ring: io_uring or the simulated ring), behind one seam any host can drive.
//! - [`log_shared`]: one log's state shared by its handle and its shard; [`shard`]:
//!   pinned threads that own logs and run their turns; [`manager`]: the set of shards;
//!   [`log_handle`]: the thread-safe handle callers use.
//! - [`recovery`]: opening a directory; [`reader`], [`tail`], [`stream`]: reading a
//!   segment, following the tail, consuming a whole log in order; [`inspect`]:
//!   read-only checks of a log directory for the command-line tools.

#[doc(hidden)]
pub mod archive;
#[doc(hidden)]
pub mod buffer;
pub mod chunk_cache;
#[doc(hidden)]
pub mod clock;
#[doc(hidden)]
pub mod compress;
#[doc(hidden)]
pub mod compressed_format;
pub mod config;
#[doc(hidden)]
pub mod cpu_quota;
pub mod error;
#[doc(hidden)]
pub mod exec;
#[doc(hidden)]
pub mod format;
#[doc(hidden)]
pub mod fs;
#[doc(hidden)]
pub mod inspect;
#[doc(hidden)]
pub mod layout;
pub mod log;
#[doc(hidden)]
pub mod log_handle;
#[doc(hidden)]
pub mod log_histograms;
#[doc(hidden)]
pub mod log_queue;
#[doc(hidden)]
pub mod log_shared;
#[doc(hidden)]
pub mod manager;
pub mod metrics;
pub mod reader;
#[doc(hidden)]
pub mod recovery;
#[doc(hidden)]
pub mod release_mark;
pub mod shard;
#[doc(hidden)]
pub mod signal;
pub mod stream;
pub mod tail;
#[doc(hidden)]
pub mod zstd_codec;
