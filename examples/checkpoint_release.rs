//! Release after a checkpoint: a service that has applied (checkpointed) everything up
//! to a record releases the log before it; whole segments below go, durably, and the
//! log then starts at or before the checkpoint.
//!
//! `cargo run -p bop-rs --example checkpoint_release [DIR]` (a temporary directory
//! without DIR).

mod common;
use common::example_dir;

use bop_rs::aof2::config::AofConfig;
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, _tmp) = example_dir()?;
    let manager = AofManager::with_config(AofManagerConfig::default())?;
    let mut cfg = AofConfig::default();
    cfg.root_dir = dir.join("checkpoint-release");
    // Small segments, so a few MiB span several.
    cfg.segment_min_bytes = 256 * 1024;
    cfg.segment_target_bytes = 256 * 1024;
    let aof = Aof::new(manager.handle(), cfg)?;

    let record = vec![0x42u8; 4096];
    let mut ids = Vec::new();
    for _ in 0..1000 {
        ids.push(aof.append_record(&record)?);
    }
    aof.flush_until(*ids.last().expect("ids"))?;
    let segments_before = aof.catalog_snapshot().len();

    // The service applied the first 800 records to its state and saved that: the log
    // before record 800 is no longer needed.
    let checkpoint = ids[800];
    let released = aof.release_before(checkpoint)?;
    let first = aof.first_record();
    assert!(
        first <= checkpoint,
        "the log still starts at or before the checkpoint"
    );
    println!(
        "released {released} of {segments_before} segments; the log now starts at {first} \
         (checkpoint {checkpoint})"
    );
    aof.close()?;
    Ok(())
}
