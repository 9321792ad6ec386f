//! Every code block of `spec/aof2.md`, pasted unchanged into a module and run.
//! `spec_blocks_are_verbatim` checks the pasted text against the spec (the copy in
//! `tests/spec/`, and `../shared/spec/` when present).
//!
//! `harness = false`: the Async Append block uses the default `root_dir`, which is
//! relative, so it runs in a fresh working directory, which one process at a time may set.

// BEGIN Quick Start
#[rustfmt::skip]
mod quick_start {
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};
use bop_rs::aof2::config::{AofConfig, SegmentId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = AofManager::with_config(AofManagerConfig::default())?;
    let handle = manager.handle();

    let mut cfg = AofConfig::default();
    cfg.root_dir = std::path::PathBuf::from("/tmp/aof2-demo");
    let aof = Aof::new(handle, cfg)?;

    let rid = aof.append_record(b"hello world")?;
    aof.flush_until(rid)?;

    let seg_id = SegmentId::new(rid.segment_index() as u64);
    if let Ok(reader) = aof.open_reader(seg_id) {
        let rec = reader.read_record(rid)?;
        assert_eq!(rec.payload(), b"hello world");
    }
    Ok(())
}

    // Not part of the spec block: lets the runner below call it.
    pub(super) fn run() -> Result<(), Box<dyn std::error::Error>> { main() }
}
// END Quick Start

// BEGIN Async Append
#[rustfmt::skip]
mod async_append {
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};
use bop_rs::aof2::config::AofConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = AofManager::with_config(AofManagerConfig::default())?;
    let handle = manager.handle();
    let aof = Aof::new(handle, AofConfig::default())?;
    let _rid = aof.append_record_async(b"payload").await?;
    Ok(())
}

    // Not part of the spec block: lets the runner below call it.
    pub(super) fn run() -> Result<(), Box<dyn std::error::Error>> { main() }
}
// END Async Append

// BEGIN Configuring Segment Sizes and Flush
#[rustfmt::skip]
#[allow(unused_variables)]
fn configuring_segment_sizes_and_flush() {
use bop_rs::aof2::config::{AofConfig, FlushConfig, Compression, RetentionPolicy};

let mut cfg = AofConfig::default();
cfg.flush = FlushConfig { flush_watermark_bytes: 8 * 1024 * 1024, flush_interval_ms: 5, max_unflushed_bytes: 64 * 1024 * 1024 };
cfg.segment_min_bytes = 2 * 1024 * 1024;
cfg.segment_max_bytes = 128 * 1024 * 1024;
cfg.segment_target_bytes = 16 * 1024 * 1024;
cfg.compression = Compression::Zstd;
cfg.retention = RetentionPolicy::KeepAll;
let cfg = cfg.normalized();
}
// END Configuring Segment Sizes and Flush

// BEGIN Reading Sealed Segments
#[rustfmt::skip]
mod reading_sealed_segments {
use bop_rs::aof2::reader::SegmentCursor;
use bop_rs::aof2::config::SegmentId;

fn dump_segment(aof: &bop_rs::aof2::Aof, id: SegmentId) -> bop_rs::aof2::error::AofResult<()> {
    let reader = aof.open_reader(id)?;
    let mut cursor = SegmentCursor::new(reader);
    while let Some(rec) = cursor.next()? {
        println!("{} bytes", rec.payload().len());
    }
    Ok(())
}

    // Not part of the spec block: lets the runner below call it.
    pub(super) fn run(aof: &bop_rs::aof2::Aof, id: SegmentId) -> bop_rs::aof2::error::AofResult<()> { dump_segment(aof, id) }
}
// END Reading Sealed Segments

// BEGIN Stream Sealed Then Active Tail
#[rustfmt::skip]
#[allow(unused_variables)]
mod stream_sealed_then_active_tail {
use bop_rs::aof2::reader::{SealedSegmentStream, StreamSegment};

async fn consume(aof: &bop_rs::aof2::Aof) -> bop_rs::aof2::error::AofResult<()> {
    let mut stream = SealedSegmentStream::new(aof)?;
    while let Some(seg) = stream.next_segment().await? {
        match seg {
            StreamSegment::Sealed(mut cursor) => {
                while let Some(rec) = cursor.next()? {
                    // handle sealed record
                }
            }
            StreamSegment::Active(mut cursor) => {
                while let Some(rec) = cursor.next()? {
                    // handle active record
                }
            }
        }
    }
    Ok(())
}

    // Not part of the spec block: lets the runner below call it.
    pub(super) async fn run(aof: &bop_rs::aof2::Aof) -> bop_rs::aof2::error::AofResult<()> { consume(aof).await }
}
// END Stream Sealed Then Active Tail

// BEGIN Metrics
#[rustfmt::skip]
mod metrics {
use bop_rs::aof2::{FlushMetricsExporter, Aof};

fn export(aof: &Aof) {
    let snapshot = aof.flush_metrics();
    let exporter = FlushMetricsExporter::new(snapshot);
    exporter.emit(|sample| println!("{} {}", sample.name, sample.value));
}

    // Not part of the spec block: lets the runner below call it.
    pub(super) fn run(aof: &Aof) { export(aof) }
}
// END Metrics

use bop_rs::aof2::config::{AofConfig, SegmentId};
use std::path::{Path, PathBuf};

fn spec_blocks_are_verbatim() {
    let here = include_str!("spec_blocks.rs");
    let mut specs = vec![(
        PathBuf::from("tests/spec/aof2.md"),
        include_str!("spec/aof2.md").to_string(),
    )];
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/aof2.md");
    if let Ok(s) = std::fs::read_to_string(&shared) {
        specs.push((shared, s));
    }
    for (path, spec) in specs {
        let blocks: Vec<&str> = spec
            .split("```rust\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .collect();
        assert_eq!(
            blocks.len(),
            6,
            "{} has {} rust blocks",
            path.display(),
            blocks.len()
        );
        for (i, block) in blocks.iter().enumerate() {
            assert!(
                here.contains(block),
                "spec block {i} of {} is not pasted verbatim",
                path.display()
            );
        }
    }
    println!("spec blocks are verbatim");
}

fn quick_start_runs_and_its_reader_opens() {
    let dir = Path::new("/tmp/aof2-demo");
    // The block's directory is fixed: start from a clean one so each run is independent.
    let _ = std::fs::remove_dir_all(dir);
    let opened = aof2_shards::reader::readers_opened();
    quick_start::run().expect("Quick Start runs");
    assert_eq!(
        aof2_shards::reader::readers_opened(),
        opened + 1,
        "Quick Start's `if let Ok(reader)` must take the Ok branch"
    );
    // The record is on disk: reopen (recovery seals the segment) and read it back.
    let manager = bop_rs::aof2::AofManager::with_config(Default::default()).unwrap();
    let mut cfg = AofConfig::default();
    cfg.root_dir = dir.to_path_buf();
    let aof = bop_rs::aof2::Aof::new(manager.handle(), cfg).unwrap();
    let reader = aof
        .open_reader(SegmentId::new(0))
        .expect("segment 0 sealed at reopen");
    assert!(reader.is_sealed());
    let rid = bop_rs::aof2::RecordId::from_parts(0, 64);
    assert_eq!(reader.read_record(rid).unwrap().payload(), b"hello world");
    println!("quick start: ok");
}

fn async_append_runs_in_its_own_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(tmp.path()).unwrap();
    let r = async_append::run();
    std::env::set_current_dir(before).unwrap();
    r.expect("Async Append runs");
    let seg = tmp
        .path()
        .join("aof2-data/segments/00000000000000000000.seg");
    let bytes = std::fs::read(&seg).expect("the default root_dir holds segment 0");
    assert!(
        bytes.windows(7).any(|w| w == b"payload"),
        "the record reached the file"
    );
    println!("async append: ok");
}

fn metrics_block_exports_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = bop_rs::aof2::AofManager::with_config(Default::default()).unwrap();
    let mut cfg = AofConfig::default();
    cfg.root_dir = tmp.path().join("log");
    let aof = bop_rs::aof2::Aof::new(manager.handle(), cfg).unwrap();
    let rid = aof.append_record(b"m").unwrap();
    aof.flush_until(rid).unwrap();
    metrics::run(&aof);
    let snap = aof.flush_metrics();
    assert_eq!(snap.records_appended, 1);
    assert!(snap.syncs >= 1);
    assert_eq!(snap.backlog_bytes, 0);
    println!("metrics: ok");
}

fn small_log(dir: &Path, manager: &bop_rs::aof2::AofManager) -> bop_rs::aof2::Aof {
    let mut cfg = AofConfig::default();
    cfg.root_dir = dir.to_path_buf();
    cfg.segment_min_bytes = 64 * 1024;
    cfg.segment_target_bytes = 64 * 1024;
    cfg.segment_max_bytes = 64 * 1024;
    bop_rs::aof2::Aof::new(manager.handle(), cfg).unwrap()
}

fn reading_sealed_segments_reads_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = bop_rs::aof2::AofManager::with_config(Default::default()).unwrap();
    let aof = small_log(tmp.path(), &manager);
    let mut last = None;
    for i in 0..400u32 {
        last = Some(aof.append_record(&i.to_le_bytes().repeat(100)).unwrap());
    }
    aof.flush_until(last.unwrap()).unwrap();
    let sealed = aof.seal_active().unwrap().expect("a segment to seal");
    let opened = aof2_shards::reader::readers_opened();
    for seg in aof.catalog_snapshot() {
        assert!(seg.sealed);
        reading_sealed_segments::run(&aof, SegmentId::new(seg.segment_id)).unwrap();
    }
    assert!(
        sealed.as_u64() >= 1,
        "400 records of 400 bytes roll a 64 KiB segment"
    );
    assert_eq!(
        aof2_shards::reader::readers_opened() - opened,
        aof.catalog_snapshot().len() as u64
    );
    // A segment that does not exist is an error, not an empty dump.
    assert!(reading_sealed_segments::run(&aof, SegmentId::new(999)).is_err());
    println!("reading sealed segments: ok");
}

fn stream_block_consumes_until_the_log_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = bop_rs::aof2::AofManager::with_config(Default::default()).unwrap();
    let aof = std::sync::Arc::new(small_log(tmp.path(), &manager));
    let writer = {
        let aof = aof.clone();
        std::thread::spawn(move || {
            for i in 0..2000u32 {
                let rid = aof.append_record(&i.to_le_bytes().repeat(50)).unwrap();
                if i % 100 == 99 {
                    aof.flush_until(rid).unwrap();
                }
            }
            aof.close().unwrap();
        })
    };
    let opened = aof2_shards::reader::readers_opened();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            stream_sealed_then_active_tail::run(&aof),
        )
        .await
        .expect("the stream ends once the log is closed")
        .expect("consume succeeds")
    });
    writer.join().unwrap();
    let segments = aof.catalog_snapshot().len() as u64;
    assert!(segments > 2, "the writer rolled through several segments");
    assert!(aof2_shards::reader::readers_opened() - opened >= segments);
    println!("stream sealed then active tail: ok");
}

fn main() {
    spec_blocks_are_verbatim();
    reading_sealed_segments_reads_every_record();
    stream_block_consumes_until_the_log_closes();
    quick_start_runs_and_its_reader_opens();
    async_append_runs_in_its_own_directory();
    configuring_segment_sizes_and_flush();
    println!("configuring: ok");
    metrics_block_exports_samples();
}
