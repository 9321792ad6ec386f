//! Configuration and identifiers: [`AofConfig`], [`FlushConfig`], [`Compression`],
//! [`RetentionPolicy`], [`CommitMode`], [`AofManagerConfig`], [`IoBackend`], [`UringFeature`],
//! the archive's [`ArchiveStore`], [`S3Config`], [`S3Credentials`] and [`Secret`],
//! [`RecordId`],
//! [`SegmentId`].

pub use aof2_shards::config::{
    AofConfig, AofManagerConfig, ArchiveStore, CommitMode, Compression, FlushConfig, IoBackend,
    RecordId, RetentionPolicy, S3Config, S3Credentials, Secret, SegmentId, ShardExecutor,
    UringFeature, DEFAULT_FILE_MODE, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES,
};
