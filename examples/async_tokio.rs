//! Async on Tokio: tasks append and wait for durability without blocking the runtime's
//! threads; a batch is appended atomically.
//!
//! `cargo run -p bop-rs --example async_tokio [DIR]` (a temporary directory without DIR).

mod common;
use common::example_dir;

use bop_rs::aof2::config::AofConfig;
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};
use std::sync::Arc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, _tmp) = example_dir()?;
    let manager = AofManager::with_config(AofManagerConfig::default())?;
    let mut cfg = AofConfig::default();
    cfg.root_dir = dir.join("async-tokio");
    let aof = Arc::new(Aof::new(manager.handle(), cfg)?);

    // Eight tasks, each appending 100 records and waiting for the last to be durable.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let aof = aof.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for i in 0..100 {
                let rid = aof
                    .append_record_async(format!("task {t} record {i}").as_bytes())
                    .await?;
                last = Some(rid);
            }
            aof.flush_until_async(last.expect("a hundred records"))
                .await?;
            Ok::<_, bop_rs::aof2::AofError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // A batch: all of its records survive a crash, or none of them.
    let batch: [&[u8]; 3] = [b"debit A", b"credit B", b"commit"];
    let last = aof.append_batch_async(&batch).await?;
    aof.flush_until_async(last).await?;

    let m = aof.flush_metrics();
    println!(
        "{} records durable in {} syncs ({:.1} per sync)",
        m.records_appended,
        m.syncs,
        m.records_appended as f64 / m.syncs.max(1) as f64
    );
    aof.close()?;
    Ok(())
}
