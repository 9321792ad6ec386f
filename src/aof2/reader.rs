//! Reading records back: [`SegmentReader`] (from [`crate::aof2::Aof::open_reader`])
//! and [`SegmentRecord`].

pub use aof2_shards::reader::{SegmentReader, SegmentRecord};
