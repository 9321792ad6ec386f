//! Metrics in Prometheus text: two logs in one manager, each series labelled with its
//! log's directory, and latency histograms; the text is what a service serves at its
//! `/metrics` endpoint (with any HTTP server: the body is `prometheus_text()`, the
//! content type `text/plain; version=0.0.4`).
//!
//! `cargo run -p bop-rs --example prometheus_metrics [DIR]` (a temporary directory
//! without DIR).

mod common;
use common::example_dir;

use bop_rs::aof2::config::AofConfig;
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, _tmp) = example_dir()?;
    let manager = AofManager::with_config(AofManagerConfig::default())?;
    let mut logs = Vec::new();
    for name in ["orders", "payments"] {
        let mut cfg = AofConfig::default();
        cfg.root_dir = dir.join(name);
        logs.push(Aof::new(manager.handle(), cfg)?);
    }
    for (i, aof) in logs.iter().enumerate() {
        for n in 0..(100 * (i + 1)) {
            let rid = aof.append_record(format!("{n}").as_bytes())?;
            if n % 10 == 9 {
                aof.flush_until(rid)?;
            }
        }
        aof.flush()?;
    }
    let text = manager.prometheus_text();
    // Print the families a dashboard starts with.
    for line in text.lines().filter(|l| {
        l.contains("aof_records_appended_total")
            || l.starts_with("aof_append_to_durable_seconds_count")
            || l.starts_with("aof_append_to_durable_seconds_bucket") && l.contains("le=\"0.001\"")
    }) {
        println!("{line}");
    }
    println!("({} lines in all)", text.lines().count());
    for aof in &logs {
        aof.close()?;
    }
    Ok(())
}
