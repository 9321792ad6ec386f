//! Every kernel from 5.15: each optional io_uring feature and `STATX_DIOALIGN` made
//! missing in turn (through `AofManagerConfig::io_uring_disable` and
//! `PosixFs::learning_alignment_from`, since this machine runs a newer kernel), plus the
//! whole feature sets of Linux 5.15 and 5.5 at once, and the portable backend. Each run
//! writes the same deterministic workload (fixed clock and generation nonce) and must
//! write segment files byte-identical to the run with everything available, never
//! submit an opcode it was told is missing, and still write with O_DIRECT.

mod common;

use aof2_shards::clock::Clock;
use aof2_shards::config::{AofManagerConfig, IoBackend, SegmentId, UringFeature};
use aof2_shards::exec::uring::OpCounts;
use aof2_shards::fs::posix::{DioAlignSource, PosixFs};
use aof2_shards::log_handle::LogHandle;
use aof2_shards::manager::ShardSet;
use aof2_shards::shard::Running;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct Variant {
    name: &'static str,
    backend: IoBackend,
    disable: Vec<UringFeature>,
    dio: DioAlignSource,
}

fn variants() -> Vec<Variant> {
    use UringFeature::*;
    let uring = |name, disable: Vec<UringFeature>| Variant {
        name,
        backend: IoBackend::Uring,
        disable,
        dio: DioAlignSource::Statx,
    };
    let mut v = vec![
        uring("everything", vec![]),
        uring("no SINGLE_ISSUER (before 6.0)", vec![SingleIssuer]),
        uring("no DEFER_TASKRUN (6.0)", vec![DeferTaskrun]),
        uring("no IORING_REGISTER_PROBE", vec![Probe]),
        uring("no IORING_OP_WRITE", vec![Write]),
        uring("no IORING_OP_READ", vec![Read]),
        uring("no registered buffers", vec![RegisteredBuffers]),
        uring("no WRITE_FIXED", vec![WriteFixed]),
        uring("no WRITEV_FIXED (before 6.15)", vec![WritevFixed]),
        uring("no RWF_DSYNC writes (write, then fsync)", vec![DsyncWrite]),
    ];
    v.push(Variant {
        name: "Linux 5.15",
        backend: IoBackend::Uring,
        disable: vec![SingleIssuer, DeferTaskrun, WritevFixed],
        dio: DioAlignSource::LogicalBlockSize,
    });
    v.push(Variant {
        name: "Linux 5.5",
        backend: IoBackend::Uring,
        disable: vec![SingleIssuer, DeferTaskrun, WritevFixed, Probe, Write, Read],
        dio: DioAlignSource::LogicalBlockSize,
    });
    v.push(Variant {
        name: "alignment by probe (no sysfs block size)",
        backend: IoBackend::Uring,
        disable: vec![],
        dio: DioAlignSource::Probe,
    });
    let portable = |name, dio| Variant {
        name,
        backend: IoBackend::Sync,
        disable: vec![],
        dio,
    };
    let p = vec![
        portable("portable backend", DioAlignSource::Statx),
        portable(
            "portable backend, no STATX_DIOALIGN",
            DioAlignSource::LogicalBlockSize,
        ),
        portable(
            "portable backend, alignment by probe",
            DioAlignSource::Probe,
        ),
    ];
    // The suite's portable pass (`AOF2_BACKEND=sync`) compares the portable runs alone.
    match std::env::var("AOF2_BACKEND").as_deref() {
        Ok("sync") => p,
        _ => v.into_iter().chain(p).collect(),
    }
}

/// The non-blank segment files of a log: name -> bytes.
fn segment_files(root: &Path) -> Files {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root.join("segments")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".seg") {
            continue; // prepared files marked ready at close: blank
        }
        let bytes = std::fs::read(e.path()).unwrap();
        if bytes[..64].iter().any(|&b| b != 0) {
            out.insert(name, bytes);
        }
    }
    out
}

/// Operations submitted, by opcode name.
type Ops = [(&'static str, u64); 7];

/// Segment file name -> bytes.
type Files = BTreeMap<String, Vec<u8>>;

fn counts(c: &OpCounts) -> Ops {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    [
        ("write", l(&c.write)),
        ("writev", l(&c.writev)),
        ("write_fixed", l(&c.write_fixed)),
        ("writev_fixed", l(&c.writev_fixed)),
        ("fsync", l(&c.fsync)),
        ("read", l(&c.read)),
        ("readv", l(&c.readv)),
    ]
}

/// Runs the workload under `v`; returns the files written, or `None` without io_uring.
fn run(v: &Variant, root: &Path) -> Option<(Files, Ops)> {
    let mut cfg = AofManagerConfig::default();
    cfg.shards = 1;
    cfg.backend = v.backend;
    cfg.io_uring_disable = v.disable.clone();
    let set = match ShardSet::start_with(&cfg, Arc::new(PosixFs::learning_alignment_from(v.dio))) {
        Ok(s) => s,
        Err(e) => {
            assert!(
                std::env::var("AOF2_REQUIRE_URING").as_deref() != Ok("1"),
                "{}: io_uring required: {e}",
                v.name
            );
            eprintln!("{}: io_uring unavailable ({e}); nothing to check", v.name);
            return None;
        }
    };
    if let Running::Uring(s) = &set.running()[0] {
        let f = s.features;
        for (feature, on) in [
            (UringFeature::SingleIssuer, f.single_issuer),
            (UringFeature::DeferTaskrun, f.defer_taskrun),
            (UringFeature::Probe, f.probed),
            (UringFeature::Write, f.write),
            (UringFeature::Read, f.read),
            (UringFeature::WriteFixed, f.write_fixed),
            (UringFeature::WritevFixed, f.writev_fixed),
        ] {
            if v.disable.contains(&feature) {
                assert!(
                    !on,
                    "{}: {feature:?} is in use though disabled: {s:?}",
                    v.name
                );
            }
        }
    }
    let mut c = small_cfg(root);
    c.segment_min_bytes = 1 << 20;
    c.segment_target_bytes = 1 << 20; // 1 MiB buffers: the registered arena's size class
    c.segment_max_bytes = 4 << 20;
    c.flush.flush_interval_ms = 0;
    let clock = Clock::Manual(Arc::new(AtomicU64::new(1_750_000_000_000_000_000)));
    let log = LogHandle::open_with(&set, c, set.fs(), clock, 0x5eed).unwrap();
    let mut rids = Vec::new();
    for i in 0..300u64 {
        // Small and large records (some span several blocks or buffers, one needs a
        // segment of its own), each made durable before the next is appended, so every
        // frame's `synced_before` is the same in every run.
        let len = match i % 50 {
            49 => 1_500_000,
            7 | 21 => 70_000 + (i as usize * 13) % 9000,
            _ => (i as usize * 977) % 6000,
        };
        let mut p = payload(7, i);
        p.resize(len.max(p.len()), (i % 251) as u8);
        let rid = log.append(&p).unwrap();
        log.flush_until(rid).unwrap();
        if i % 100 == 99 {
            log.seal_active().unwrap();
        }
        rids.push((rid, p));
    }
    assert_eq!(log.metrics().direct_io, 1, "{}: O_DIRECT on ext4", v.name);
    for (rid, p) in rids.iter().step_by(37) {
        let r = log
            .open_reader(SegmentId::new(rid.segment_index() as u64))
            .unwrap();
        assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..], "{}", v.name);
    }
    drop(log);
    let ops = counts(&set.shards()[0].ring_ops);
    drop(set);
    Some((segment_files(root), ops))
}

#[test]
fn every_feature_set_from_linux_5_15_writes_identical_segments() {
    init_log();
    let d = tempfile::tempdir().unwrap();
    let mut baseline: Option<(Files, Ops)> = None;
    for (i, v) in variants().iter().enumerate() {
        let Some((files, ops)) = run(v, &d.path().join(format!("v{i}"))) else {
            return;
        };
        println!("{:<45} {ops:?}", v.name);
        let used = |name: &str| ops.iter().find(|(n, _)| *n == name).unwrap().1;
        use UringFeature::*;
        let banned: &[(UringFeature, &str)] = &[
            (Write, "write"),
            (Read, "read"),
            (WriteFixed, "write_fixed"),
            (WritevFixed, "writev_fixed"),
            (RegisteredBuffers, "write_fixed"),
            (RegisteredBuffers, "writev_fixed"),
            (Probe, "write"),
            (Probe, "read"),
            (Probe, "writev_fixed"),
        ];
        for (feature, opcode) in banned {
            if v.disable.contains(feature) {
                assert_eq!(used(opcode), 0, "{}: {opcode} submitted: {ops:?}", v.name);
            }
        }
        // The plain paths stand in.
        if v.disable.contains(&WriteFixed) {
            assert!(used("write") > 0, "{}: {ops:?}", v.name);
        }
        // (A glommio shard never reads its eventfd through its ring: glommio waits on it.)
        let glommio = aof2_shards::config::ShardExecutor::Threads
            .resolve()
            .unwrap()
            .is_glommio();
        if v.disable.contains(&Read) && !glommio {
            assert!(used("readv") > 0, "{}: {ops:?}", v.name);
        }
        if v.disable.contains(&WritevFixed) {
            assert!(used("writev") > 0, "{}: {ops:?}", v.name);
        }
        match &baseline {
            None => {
                // With everything available (this kernel), every path is in use.
                if v.backend == IoBackend::Uring {
                    for opcode in ["write_fixed", "writev_fixed", "fsync", "read"] {
                        if opcode == "read" && glommio {
                            continue;
                        }
                        assert!(used(opcode) > 0, "{opcode} unused: {ops:?}");
                    }
                }
                assert!(files.len() >= 4, "several segments: {:?}", files.keys());
                baseline = Some((files, ops));
            }
            Some((want, _)) => {
                assert_eq!(
                    files.keys().collect::<Vec<_>>(),
                    want.keys().collect::<Vec<_>>(),
                    "{}: other segment files",
                    v.name
                );
                for (name, bytes) in &files {
                    if let Some(at) = bytes.iter().zip(&want[name]).position(|(a, b)| a != b) {
                        panic!("{}: {name} differs at byte {at}", v.name);
                    }
                    assert_eq!(bytes.len(), want[name].len(), "{}: {name}", v.name);
                }
            }
        }
    }
}
