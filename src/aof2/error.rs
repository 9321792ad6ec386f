//! The error type: one enum, each variant naming the path, segment, offset or value
//! involved.

pub use aof2_shards::error::{AofError, AofResult, WouldBlockKind};
