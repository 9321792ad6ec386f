//! Tier 2, the archive: the store seam a service can implement
//! ([`config::ArchiveStore::Custom`](crate::aof2::config::ArchiveStore::Custom)), the
//! local-directory store, and an in-memory store with injected faults for tests.

pub use aof2_shards::archive::mem_store::MemStore;
pub use aof2_shards::archive::store::{
    ArchiveBackend, Created, LocalDirStore, Object, StoreError, StoreErrorKind,
};
