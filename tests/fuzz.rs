//! Fuzzing on the stable toolchain: seeded mutations of a corpus of real segment files
//! (`tests/corpus/`), fed to two targets:
//!
//! - `decoders`: the segment header, frame and footer decoders and the frame scanners,
//!   on mutated segment images and on raw slices of them;
//! - `recovery`: opening a log directory built from mutated segment files (on the
//!   simulated disk), then reading every segment it reports sealed, as the cursor does.
//!
//! Any input may be refused with an error; none may panic or hang (out-of-bounds reads
//! would panic in safe Rust). Mutations: bit flips, byte overwrites, zeroed and copied
//! ranges (stale blocks), truncation and extension, splices between files.
//!
//! `AOF2_FUZZ_ITERS=N` sets the inputs per target (default 20000), `AOF2_FUZZ_SEED=S`
//! the first seed; a failure prints the seed that reproduces it and saves the input
//! under `target/fuzz-failures/`. `scripts/fuzz.sh` runs millions.
//! `AOF2_FUZZ_REGENERATE=1 cargo test --test fuzz regenerate_corpus` rewrites the corpus.

mod common;

use aof2_shards::clock::Clock;
use aof2_shards::compressed_format::CompressedSegment;
use aof2_shards::format::{self, FrameDecode, HeaderState, SegmentFooter, SegmentHeader};
use aof2_shards::fs::sim::{SimFs, SimRng};
use aof2_shards::fs::{Fs, OpenMode};
use aof2_shards::layout::{segment_file_name, LogPaths};
use aof2_shards::recovery;
use aof2_shards::release_mark::ReleaseMark;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// The corpus: (file name, bytes), in name order.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the corpus has its files");
    files
}

fn mutate(rng: &mut SimRng, img: &mut Vec<u8>, other: &[u8]) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        if img.is_empty() {
            img.extend_from_slice(&other[..other.len().min(4096)]);
            continue;
        }
        let len = img.len() as u64;
        match rng.below(8) {
            0 => {
                let at = rng.below(len) as usize;
                img[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(len) as usize;
                img[at] = rng.next_u64() as u8;
            }
            2 => {
                // Hit the structures: the header, the first frames, the footer region.
                let hot = [
                    0,
                    32,
                    64,
                    96,
                    len.saturating_sub(4096),
                    len.saturating_sub(4096) + 76,
                ];
                let at = (hot[rng.below(hot.len() as u64) as usize] + rng.below(32)).min(len - 1);
                img[at as usize] ^= 1 << rng.below(8);
            }
            3 => {
                let at = rng.below(len) as usize;
                let n = (rng.below(4096) as usize).min(img.len() - at);
                img[at..at + n].fill(0);
            }
            4 => {
                // A stale block: bytes copied from elsewhere in the file.
                let (a, b) = (rng.below(len) as usize, rng.below(len) as usize);
                let n = (rng.below(4096) as usize).min(img.len() - a.max(b));
                let chunk = img[a..a + n].to_vec();
                img[b..b + n].copy_from_slice(&chunk);
            }
            5 => {
                // Frames from another segment spliced in.
                let (a, b) = (
                    rng.below(other.len() as u64) as usize,
                    rng.below(len) as usize,
                );
                let n = (rng.below(8192) as usize)
                    .min(other.len() - a)
                    .min(img.len() - b);
                img[b..b + n].copy_from_slice(&other[a..a + n]);
            }
            6 => {
                let cut = rng.below(len + 1) as usize;
                img.truncate(cut);
            }
            _ => {
                let n = rng.below(8192) as usize;
                img.extend((0..n).map(|_| rng.next_u64() as u8));
            }
        }
    }
}

fn save_failure(target: &str, seed: u64, files: &[(String, Vec<u8>)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-failures")
        .join(format!("{target}-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

fn iterations() -> (u64, u64) {
    let n = std::env::var("AOF2_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let first = std::env::var("AOF2_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (first, n)
}

type Inputs = Vec<(String, Vec<u8>)>;
type Gen = fn(&mut SimRng, &[(String, Vec<u8>)]) -> Inputs;

/// For each seed, makes inputs with `gen` and runs `check` on them; a panic is reported
/// with its seed, and its inputs are saved.
fn run(target: &'static str, gen: Gen, check: fn(&mut SimRng, &Inputs)) {
    let (first, n) = iterations();
    let corpus = corpus();
    // A hang fails the test instead of stalling CI.
    let limit = Duration::from_secs(60 + n / 20);
    common::within(limit, target, move || {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for seed in first..first + n {
            let mut rng = SimRng::new(seed ^ 0x5eed_f022);
            let inputs = gen(&mut rng, &corpus);
            let r = catch_unwind(AssertUnwindSafe(|| check(&mut rng, &inputs)));
            if let Err(p) = r {
                std::panic::set_hook(hook);
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let saved = save_failure(target, seed, &inputs);
                panic!(
                    "{target}: seed {seed} panicked: {msg}\ninput saved in {}\nreproduce: AOF2_FUZZ_SEED={seed} AOF2_FUZZ_ITERS=1 cargo test --test fuzz {target}",
                    saved.display()
                );
            }
        }
        std::panic::set_hook(hook);
    });
    println!("{target}: {n} inputs from seed {first}, no panic, no hang");
}

/// Every decoder over one mutated image.
fn decode_all(img: &[u8]) {
    let seed = match SegmentHeader::decode(img) {
        Ok(HeaderState::Valid(h, seed)) => {
            let size = h.file_size;
            if let Some(tail) = (size as usize)
                .checked_sub(format::FOOTER_REGION as usize)
                .and_then(|at| img.get(at..))
            {
                let _ = SegmentFooter::decode(tail, seed, size);
            }
            seed
        }
        _ => 0x1234_5678,
    };
    let _ = SegmentFooter::decode(img, seed, img.len() as u64);
    for limit in [img.len() as u64, img.len() as u64 / 2, u64::MAX, 0] {
        let scan = format::scan_frames(seed, img, limit);
        if let format::ScanStop::Invalid { offset, .. } = scan.stop {
            let _ = format::find_frame_proving_corruption(seed, img, offset, limit);
        }
        let mut it = format::frames(seed, img, limit);
        for f in it.by_ref().flatten() {
            let _ = f.payload.len();
        }
        let _ = it.position();
    }
    for at in [0usize, 64, 96, 4096] {
        if let Some(b) = img.get(at..) {
            if let FrameDecode::Frame(h) = format::decode_frame(seed, b) {
                let _ = h;
            }
        }
    }
    let _ = ReleaseMark::decode(img);
    if let Ok(c) = CompressedSegment::parse(img) {
        for i in 0..c.chunks.len() {
            let _ = c.inflate(i);
        }
        let _ = c.chunk_for(img.len() as u64 / 2);
    }
}

fn decoder_input(rng: &mut SimRng, corpus: &[(String, Vec<u8>)]) -> Inputs {
    let i = rng.below(corpus.len() as u64) as usize;
    let j = rng.below(corpus.len() as u64) as usize;
    let mut img = corpus[i].1.clone();
    // Now and then the compressed form of a sealed corpus segment, so the compressed
    // decoder gets past its trailer and index checks.
    if rng.chance(1, 4) {
        if let Ok(z) = aof2_shards::compressed_format::compress_segment(&img, 1, 4096) {
            img = z;
        }
    }
    mutate(rng, &mut img, &corpus[j].1);
    vec![("input.seg".into(), img)]
}

fn decoders(rng: &mut SimRng, inputs: &Inputs) {
    let img = &inputs[0].1;
    decode_all(img);
    // Raw slices too: decoders must not assume a whole segment.
    let a = rng.below(img.len() as u64 + 1) as usize;
    let b = a + rng.below((img.len() - a) as u64 + 1) as usize;
    decode_all(&img[a..b]);
}

/// A directory of 1 to 4 segment files under consecutive (or skipping) ids, now and
/// then a leftover temp file, most of them mutated.
fn directory_input(rng: &mut SimRng, corpus: &[(String, Vec<u8>)]) -> Inputs {
    if rng.chance(1, 2) {
        // The corpus directory as the engine left it (ids match names), a prefix of it,
        // with some files mutated: recovery gets past the headers and deep into frames.
        let n = 1 + rng.below(corpus.len() as u64) as usize;
        return corpus[..n]
            .iter()
            .map(|(name, img)| {
                let mut img = img.clone();
                if rng.chance(1, 2) {
                    let j = rng.below(corpus.len() as u64) as usize;
                    mutate(rng, &mut img, &corpus[j].1);
                }
                (name.clone(), img)
            })
            .collect();
    }
    let n = 1 + rng.below(4);
    let mut files = Vec::new();
    let mut id = 0u64;
    for _ in 0..n {
        let i = rng.below(corpus.len() as u64) as usize;
        let j = rng.below(corpus.len() as u64) as usize;
        let mut img = corpus[i].1.clone();
        if rng.chance(3, 4) {
            mutate(rng, &mut img, &corpus[j].1);
        }
        let name = if rng.chance(1, 10) {
            format!("{}.tmp", segment_file_name(id))
        } else if rng.chance(1, 10) {
            format!("{id:020}.spare")
        } else if rng.chance(1, 8) {
            // A compressed segment (valid when the corpus file was a sealed segment of
            // this id and the mutation spared it), maybe beside its raw copy.
            if let Ok(z) = aof2_shards::compressed_format::compress_segment(&corpus[i].1, 1, 4096) {
                img = z;
                if rng.chance(1, 3) {
                    mutate(rng, &mut img, &corpus[j].1);
                }
            }
            format!("{id:020}.zst")
        } else {
            segment_file_name(id)
        };
        files.push((name, img));
        id += 1 + u64::from(rng.chance(1, 8));
    }
    files
}

fn recovery_target(rng: &mut SimRng, files: &Inputs) {
    let fs = SimFs::new(rng.next_u64());
    let paths = LogPaths::new(Path::new("/fz/log"));
    for d in ["/fz", "/fz/log", "/fz/log/segments"] {
        fs.mkdir(Path::new(d), 0o700).unwrap();
    }
    for (name, img) in files {
        let f = fs
            .open(&paths.segments.join(name), OpenMode::create_new(false))
            .unwrap();
        if !img.is_empty() {
            f.pwritev(0, &[img]).unwrap();
        }
        f.fdatasync().unwrap();
    }
    if rng.chance(1, 6) {
        // A release mark: valid, mutated, or cut short.
        let mark = ReleaseMark {
            first_segment: rng.below(3),
            first_record_index: rng.below(200),
        };
        let mut b = mark.encode().to_vec();
        if rng.chance(1, 2) {
            let at = rng.below(b.len() as u64) as usize;
            b[at] ^= 1 << rng.below(8);
        }
        if rng.chance(1, 4) {
            b.truncate(rng.below(b.len() as u64) as usize);
        }
        let f = fs
            .open(&paths.released, OpenMode::create_new(false))
            .unwrap();
        if !b.is_empty() {
            f.pwritev(0, &[&b]).unwrap();
        }
        f.fdatasync().unwrap();
    }
    fs.fsync_dir(&paths.segments).unwrap();
    fs.fsync_dir(Path::new("/fz/log")).unwrap();
    fs.fsync_dir(Path::new("/fz")).unwrap();
    fs.fsync_dir(Path::new("/")).unwrap();
    if let Ok(opened) = recovery::open_log(&fs, &paths, &Clock::default(), 0o600) {
        // What recovery trusts must read back frame by frame without a panic.
        for s in &opened.recovered.sealed {
            let p = paths.segment(s.header.segment_id);
            if let Ok(img) = fs.read_file(&p) {
                for f in format::frames(s.seed, &img, s.footer.data_end) {
                    if f.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

#[test]
fn decoders_never_panic() {
    run("decoders_never_panic", decoder_input, decoders);
}

#[test]
fn recovery_never_panics() {
    run("recovery_never_panics", directory_input, recovery_target);
}

/// Rewrites `tests/corpus/` from the engine itself (run by hand).
#[test]
fn regenerate_corpus() {
    if std::env::var("AOF2_FUZZ_REGENERATE").is_err() {
        return;
    }
    use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};
    let d = tempfile::tempdir().unwrap();
    let m = AofManager::with_config(AofManagerConfig::default()).unwrap();
    let mut cfg = common::small_cfg(d.path());
    cfg.segment_max_bytes = 128 * 1024;
    let aof = Aof::new(m.handle(), cfg).unwrap();
    for i in 0..40u64 {
        let p = common::payload(1, i);
        aof.append_record(&p[..(i as usize * 37) % p.len()])
            .unwrap();
    }
    aof.seal_active().unwrap();
    aof.append_record(&vec![0xabu8; 100_000]).unwrap(); // a segment of its own
    aof.seal_active().unwrap();
    for i in 0..25u64 {
        let r = aof.append_record(&common::payload(2, i)).unwrap();
        aof.flush_until(r).unwrap();
    }
    // Dropping without sealing leaves the last segment unsealed, and one prepared.
    drop(aof);
    drop(m);
    let out = corpus_dir();
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(d.path().join("segments")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&p, out.join(name)).unwrap();
    }
}
