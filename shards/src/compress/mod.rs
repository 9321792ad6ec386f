//! Compression of sealed segments in the background (`Compression::Zstd`): `swap.rs`
//! replaces one raw segment file with its compressed copy, step by step; `worker.rs`
//! is the low-priority thread that runs swaps for every log of a manager. The log
//! core decides what to compress and keeps the books (`log/compression.rs`).

pub mod swap;
pub mod worker;
