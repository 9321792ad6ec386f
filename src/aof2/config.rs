//! Configuration and identifiers: [`AofConfig`], [`FlushConfig`], [`Compression`],
//! [`RetentionPolicy`], [`CommitMode`], [`AofManagerConfig`], [`IoBackend`], [`UringFeature`],
//! [`RecordId`],
//! [`SegmentId`].

pub use aof2_shards::config::{
    AofConfig, AofManagerConfig, CommitMode, Compression, FlushConfig, IoBackend, RecordId,
    RetentionPolicy, SegmentId, ShardExecutor, UringFeature, DEFAULT_FILE_MODE, MAX_SEGMENT_BYTES,
    MIN_SEGMENT_BYTES,
};
