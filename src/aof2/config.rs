//! Configuration and identifiers: [`AofConfig`], [`FlushConfig`], [`Compression`],
//! [`RetentionPolicy`], [`AofManagerConfig`], [`IoBackend`], [`RecordId`], [`SegmentId`].

pub use aof2_shards::config::{
    AofConfig, AofManagerConfig, Compression, FlushConfig, IoBackend, RecordId, RetentionPolicy,
    SegmentId, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES,
};
