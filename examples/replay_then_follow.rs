//! Replay at start-up, then follow: a consumer reads the log from its first record
//! (what earlier runs wrote), then keeps reading new records as a writer makes them
//! durable, in order and each once.
//!
//! `cargo run -p bop-rs --example replay_then_follow [DIR]` (a temporary directory
//! without DIR). Run it twice with the same DIR: the second run replays the first's.

mod common;
use common::example_dir;

use bop_rs::aof2::config::AofConfig;
use bop_rs::aof2::reader::{SealedSegmentStream, StreamSegment};
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};
use std::sync::Arc;

const NEW: u64 = 500;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, _tmp) = example_dir()?;
    let manager = AofManager::with_config(AofManagerConfig::default())?;
    let mut cfg = AofConfig::default();
    cfg.root_dir = dir.join("replay-then-follow");
    let aof = Arc::new(Aof::new(manager.handle(), cfg)?);
    let before = aof.tail_state().durable;

    // The writer: 500 new records, made durable every 50.
    let w = aof.clone();
    let writer = std::thread::spawn(move || -> bop_rs::aof2::AofResult<()> {
        for i in 0..NEW {
            let rid = w.append_record(format!("record {i}").as_bytes())?;
            if i % 50 == 49 {
                w.flush_until(rid)?;
            }
        }
        Ok(())
    });

    // The consumer: every record from the first, sealed segments then the active one,
    // waiting for more at the tail.
    let (mut replayed, mut followed) = (0u64, 0u64);
    let mut stream = SealedSegmentStream::new(&aof)?;
    'read: while let Some(seg) = stream.next_segment_blocking()? {
        let mut cursor = match seg {
            StreamSegment::Sealed(c) | StreamSegment::Active(c) => c,
        };
        while let Some(rec) = cursor.next()? {
            if rec.record_id() < before {
                replayed += 1;
            } else {
                followed += 1;
                if followed == NEW {
                    break 'read;
                }
            }
        }
    }
    writer.join().expect("the writer thread")?;
    println!("replayed {replayed} records from earlier runs, then followed {followed} new ones");
    assert_eq!(followed, NEW);
    aof.close()?;
    Ok(())
}
