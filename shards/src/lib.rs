#![warn(missing_docs)]
//! The AOF2 engine: on-disk format, log core, recovery, shard threads and I/O
//! backends. The public API is the `bop_rs::aof2` facade; this crate is its engine.
//!
//! Layers, data flowing one way:
//! - [`format`]: pure encoding and decoding of segments and frames.
//! - [`log`]: the sans-I/O state machine of one log (policy lives here).
//! - [`backend`]: the file-system seam (`sync` real disk, `sim` crash simulator), and
//!   [`driver`], which runs the core's operations on it.
//! - [`shard`] / [`manager`]: pinned threads that own logs; [`log_handle`]: the
//!   thread-safe handle callers use.
//! - [`reader`], [`tail`], [`stream`]: reading a segment, following the tail, and
//!   consuming a whole log in order; [`inspect`]: read-only checks of a log directory
//!   for the command-line tools.

pub mod buffer;
pub mod clock;
pub mod config;
pub mod error;
pub mod exec;
pub mod format;
pub mod fs;
pub mod inspect;
pub mod layout;
pub mod log;
pub mod log_handle;
pub mod log_shared;
pub mod manager;
pub mod metrics;
pub mod reader;
pub mod recovery;
pub mod shard;
pub mod signal;
pub mod stream;
pub mod tail;
