//! Tier 2: sealed segments uploaded to an archive store in the background, their
//! local copies dropped under retention once the store holds them, and read back
//! (hydrated) transparently when a reader needs them.
//!
//! Files, one job each: `config` what the service configures; `store` the store seam
//! and the local-directory store; `mem_store` an in-memory store with faults (tests);
//! `stub` the durable local record of an archived segment and the log's archive id;
//! `upload` one upload, step by step; `worker`
//! the upload threads; `hydrate`
//! downloads for readers (`hydrated_cache` their LRU bookkeeping); `s3_store` the S3 store (cargo feature `s3`). Reading the
//! stubs at open is recovery's (`recovery/stubs.rs`).

pub mod config;
pub mod hydrate;
pub mod hydrated_cache;
pub mod mem_store;
#[cfg(feature = "s3")]
pub mod s3_store;
pub mod store;
pub mod stub;
pub mod upload;
pub mod worker;

use crate::error::AofResult;
use std::sync::Arc;

/// The store a configuration names.
pub fn build_store(cfg: &config::ArchiveStore) -> AofResult<Arc<dyn store::ArchiveBackend>> {
    Ok(match cfg {
        config::ArchiveStore::LocalDir(dir) => Arc::new(store::LocalDirStore::new(dir.clone())),
        #[cfg(feature = "s3")]
        config::ArchiveStore::S3(c) => Arc::new(s3_store::S3Store::new(c)?),
        config::ArchiveStore::Custom(s) => s.clone(),
    })
}
