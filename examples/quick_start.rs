//! Quick start: open a log, append records, wait until they are durable, read them back.
//!
//! `cargo run -p bop-rs --example quick_start [DIR]` (a temporary directory without DIR).

mod common;
use common::example_dir;

use bop_rs::aof2::config::{AofConfig, SegmentId};
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, _tmp) = example_dir()?;
    let manager = AofManager::with_config(AofManagerConfig::default())?;
    let mut cfg = AofConfig::default();
    cfg.root_dir = dir.join("quick-start");
    let aof = Aof::new(manager.handle(), cfg)?;

    // Appends return at once with the record's id; flush_until returns once a
    // completed fdatasync covers it.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(aof.append_record(format!("event {i}").as_bytes())?);
    }
    aof.flush_until(*ids.last().expect("ten ids"))?;

    // Read one back by its id.
    let rid = ids[3];
    let reader = aof.open_reader(SegmentId::new(rid.segment_index() as u64))?;
    let rec = reader.read_record(rid)?;
    assert_eq!(rec.payload(), b"event 3");
    println!(
        "appended {} records to {}; record {rid} reads back as {:?}",
        ids.len(),
        aof.root_dir().display(),
        String::from_utf8_lossy(rec.payload())
    );
    // Close reports a failed final sync, which a drop cannot.
    aof.close()?;
    Ok(())
}
