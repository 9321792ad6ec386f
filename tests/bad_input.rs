//! The bad-input table of README.md, one test per row: each gets a clear error naming
//! the path or value (or a documented, safe behaviour), and nothing is lost.

mod common;

use aof2_shards::format::{self, SegmentHeader};
use bop_rs::aof2::config::SegmentId;
use bop_rs::aof2::error::AofError;
use bop_rs::aof2::{Aof, RecordId};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn segments(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Appends `n` records, flushing each, then drops the log (its last segment stays unsealed).
fn write_log(root: &Path, n: u64) -> Vec<RecordId> {
    let m = manager();
    let aof = open(&m, small_cfg(root));
    let rids: Vec<RecordId> = (0..n)
        .map(|i| {
            let r = aof.append_record(&payload(9, i)).unwrap();
            aof.flush_until(r).unwrap();
            r
        })
        .collect();
    drop(aof);
    unseal_last(root);
    rids
}

#[test]
fn invalid_config_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut c = small_cfg(dir.path());
    c.flush.flush_watermark_bytes = c.flush.max_unflushed_bytes * 2;
    let e = Aof::new(m.handle(), c).expect_err("refused");
    assert!(matches!(e, AofError::InvalidConfig(_)), "{e}");
    assert!(e.to_string().contains("flush_watermark_bytes"), "{e}");
    let mut c = small_cfg(dir.path());
    c.segment_min_bytes = 8 * 1024 * 1024;
    let e = Aof::new(m.handle(), c).expect_err("refused");
    assert!(e.to_string().contains("segment_min_bytes"), "{e}");
    assert!(
        !dir.path().join("segments").exists(),
        "nothing was created for a refused config"
    );
}

#[test]
fn a_missing_root_dir_is_created_with_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/c");
    let m = manager();
    let aof = open(&m, small_cfg(&root));
    let r = aof.append_record(b"x").unwrap();
    aof.flush_until(r).unwrap();
    assert!(root.join("segments").is_dir() && root.join("LOCK").is_file());
}

#[test]
fn a_root_dir_that_is_a_regular_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("file");
    std::fs::write(&root, b"not a directory").unwrap();
    let m = manager();
    let e = Aof::new(m.handle(), small_cfg(&root)).expect_err("refused");
    assert!(e.to_string().contains(&root.display().to_string()), "{e}");
    assert_eq!(
        std::fs::read(&root).unwrap(),
        b"not a directory",
        "left untouched"
    );
}

/// Runs in a child process as an unprivileged user when the tests run as root
/// (root may write anywhere), and in-process otherwise.
#[test]
fn a_read_only_root_dir_is_an_error_naming_the_path() {
    if let Ok(root) = std::env::var("AOF2_CHILD_READ_ONLY_ROOT") {
        let m = manager();
        let e = Aof::new(m.handle(), small_cfg(Path::new(&root))).expect_err("refused");
        let msg = e.to_string();
        assert!(msg.contains(&root), "{msg}");
        assert!(
            msg.contains("Permission denied") || msg.contains("Read-only"),
            "{msg}"
        );
        println!("CHILD-OK {msg}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("ro");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = child("a_read_only_root_dir_is_an_error_naming_the_path");
    cmd.env("AOF2_CHILD_READ_ONLY_ROOT", &root);
    if is_root() {
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_writer_in_this_process_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let first = open(&m, small_cfg(dir.path()));
    let r = first.append_record(b"mine").unwrap();
    let e = Aof::new(m.handle(), small_cfg(dir.path())).expect_err("second writer refused");
    assert!(matches!(e, AofError::Locked { .. }), "{e}");
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
    drop(first); // flushes and releases the lock before returning
    let again = open(&m, small_cfg(dir.path()));
    assert_eq!(read_back(&again, r), b"mine");
}

#[test]
fn a_second_writer_in_another_process_is_refused() {
    if let Ok(root) = std::env::var("AOF2_CHILD_HOLD_LOCK") {
        let m = manager();
        let _aof = open(&m, small_cfg(Path::new(&root)));
        println!("HOLDING");
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = child("a_second_writer_in_another_process_is_refused")
        .env("AOF2_CHILD_HOLD_LOCK", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HOLDING") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "child exited early"
        );
    }
    let m = manager();
    let e = Aof::new(m.handle(), small_cfg(dir.path())).err();
    c.kill().unwrap();
    c.wait().unwrap();
    let e = e.expect("refused while the other process holds it");
    assert!(matches!(e, AofError::Locked { .. }), "{e}");
    // The lock dies with its holder.
    open(&m, small_cfg(dir.path()));
}

#[test]
fn a_foreign_file_in_the_segment_directory_is_an_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3);
    let stray = dir.path().join("segments/notes.txt");
    std::fs::write(&stray, b"mine").unwrap();
    let m = manager();
    let e = Aof::new(m.handle(), small_cfg(dir.path())).expect_err("refused");
    assert!(matches!(e, AofError::ForeignFile { .. }), "{e}");
    assert!(e.to_string().contains("notes.txt"), "{e}");
    assert_eq!(std::fs::read(&stray).unwrap(), b"mine");
}

#[test]
fn a_segment_of_a_newer_format_version_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3);
    let seg = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8..10].copy_from_slice(&(format::SEGMENT_VERSION + 1).to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let m = manager();
    let e = Aof::new(m.handle(), small_cfg(dir.path())).expect_err("refused");
    assert!(
        matches!(
            e,
            AofError::UnsupportedVersion {
                found,
                supported: format::SEGMENT_VERSION,
                ..
            } if found == format::SEGMENT_VERSION + 1
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&seg.display().to_string()), "{e}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "left as found");
}

#[test]
fn an_empty_log_reopens_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    drop(open(&m, small_cfg(dir.path())));
    drop(open(&m, small_cfg(dir.path())));
    let aof = open(&m, small_cfg(dir.path()));
    let r = aof.append_record(b"first").unwrap();
    aof.flush_until(r).unwrap();
    assert_eq!(read_back(&aof, r), b"first");
}

/// Earlier defect 4: a log holding an empty segment (crash right after a roll) could
/// not be reopened.
#[test]
fn a_log_with_an_empty_segment_left_by_a_crash_after_a_roll_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let rids = write_log(dir.path(), 20);
    let m = manager();
    drop(open(&m, small_cfg(dir.path()))); // reopening seals the last used segment
                                           // What a crash right after a roll leaves: the header of the next segment, written
                                           // into its prepared (blank) file and synced, and no frame. Build it with the format
                                           // module in a blank file under the next id, as preparation leaves it.
    let next = segments(dir.path())
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            name.ends_with(".seg")
                .then(|| name[..20].parse::<u64>().ok())?
        })
        .max()
        .expect("segments")
        + 1;
    let blank = dir.path().join("segments").join(format!("{next:020}.seg"));
    std::fs::write(&blank, vec![0u8; 64 * 1024]).unwrap();
    let mut img = std::fs::read(&blank).unwrap();
    let header = SegmentHeader {
        version: format::SEGMENT_VERSION,
        segment_id: next,
        generation: 7,
        base_record_index: 20,
        created_at_ns: 1,
        file_size: img.len() as u64,
        recycled: false,
    };
    img[..format::HEADER_LEN].copy_from_slice(&header.encode().0);
    std::fs::write(&blank, &img).unwrap();
    // Plus leftovers of an unfinished preparation.
    let tmp = dir
        .path()
        .join("segments")
        .join(format!("{:020}.seg.tmp", next + 1));
    std::fs::write(&tmp, b"partial").unwrap();

    let aof = open(&m, small_cfg(dir.path()));
    for (i, r) in rids.iter().enumerate() {
        assert_eq!(read_back(&aof, *r), payload(9, i as u64));
    }
    let empty = aof
        .open_reader(SegmentId::new(next))
        .expect("the empty segment is sealed with no records");
    assert!(empty.is_sealed());
    assert_eq!(empty.data_end(), format::HEADER_LEN as u64);
    let r = aof.append_record(b"after").unwrap();
    assert!(
        r.segment_index() as u64 > next,
        "appends continue in a new segment"
    );
    aof.flush_until(r).unwrap();
    assert!(!tmp.exists(), "temp file removed");
}

#[test]
fn corruption_followed_by_valid_frames_is_an_error_naming_segment_offset_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let rids = write_log(dir.path(), 30); // last segment left unsealed
    let victim = rids[rids.len() - 10];
    let seg = dir
        .path()
        .join("segments")
        .join(format!("{:020}.seg", victim.segment_index()));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[victim.segment_offset() as usize + 40] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let m = manager();
    let e = Aof::new(m.handle(), small_cfg(dir.path())).expect_err("refused");
    match &e {
        AofError::Corruption {
            path,
            segment,
            offset,
            ..
        } => {
            assert_eq!(path, &seg);
            assert_eq!(*segment, victim.segment_index() as u64);
            assert_eq!(*offset, victim.segment_offset() as u64);
        }
        other => panic!("expected Corruption, got {other}"),
    }
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "nothing erased or sealed"
    );
    // And again: the evidence stays, the error repeats.
    assert!(Aof::new(m.handle(), small_cfg(dir.path())).is_err());
}

#[test]
fn a_torn_tail_is_dropped_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rids = write_log(dir.path(), 10);
    let last = *rids.last().unwrap();
    let seg = dir
        .path()
        .join("segments")
        .join(format!("{:020}.seg", last.segment_index()));
    // Garbage where an unsynced write was torn: past the last frame, no later frame
    // claims it was durable.
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = last.segment_offset() as usize + format::frame_size(payload(9, 9).len());
    bytes[end..end + 700]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 7 + 1) as u8);
    std::fs::write(&seg, &bytes).unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    for (i, r) in rids.iter().enumerate() {
        assert_eq!(read_back(&aof, *r), payload(9, i as u64));
    }
    let r = aof.append_record(b"next").unwrap();
    assert!(
        r.segment_index() > last.segment_index(),
        "never appends over a torn tail"
    );
}

#[test]
fn a_damaged_record_in_a_sealed_segment_reads_as_corruption_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let rids = write_log(dir.path(), 5);
    let m = manager();
    drop(open(&m, small_cfg(dir.path()))); // seals
    let victim = rids[2];
    let seg = dir
        .path()
        .join("segments")
        .join(format!("{:020}.seg", victim.segment_index()));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[victim.segment_offset() as usize + 35] ^= 0x80;
    std::fs::write(&seg, &bytes).unwrap();
    let aof = open(&m, small_cfg(dir.path()));
    let r = aof
        .open_reader(SegmentId::new(victim.segment_index() as u64))
        .unwrap();
    let e = r.read_record(victim).unwrap_err();
    assert!(
        matches!(e, AofError::Corruption { offset, .. } if offset == victim.segment_offset() as u64),
        "{e}"
    );
    assert!(e.to_string().contains(&seg.display().to_string()), "{e}");
    assert_eq!(r.read_record(rids[1]).unwrap().payload(), payload(9, 1));
}

#[test]
fn segment_ids_stay_dense_across_clean_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut last = None;
    for round in 0..4u32 {
        let aof = open(&m, small_cfg(dir.path()));
        let r = aof.append_record(b"x").unwrap();
        aof.flush_until(r).unwrap();
        if let Some(prev) = last {
            assert_eq!(
                r.segment_index(),
                prev + 1,
                "round {round}: the next id, none skipped"
            );
        }
        last = Some(r.segment_index());
        // Sealed on purpose: the next session starts the next segment rather than
        // continue this one.
        aof.seal_active().unwrap();
    } // each drop marks a prepared file ahead `.ready`; each open reuses it in place
    assert_eq!(last, Some(3));
    // A session that does not seal: the next one continues its segment.
    let aof = open(&m, small_cfg(dir.path()));
    let r = aof.append_record(b"y").unwrap();
    drop(aof);
    let aof = open(&m, small_cfg(dir.path()));
    assert_eq!(
        aof.append_record(b"z").unwrap().segment_index(),
        r.segment_index()
    );
}

#[test]
fn a_prepared_segment_left_by_a_crash_is_reused_under_a_fresh_id() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    let r = aof.append_record(b"one").unwrap();
    // A quarter of the segment full: the next file is prepared ahead.
    for _ in 0..20 {
        aof.append_record(&[7u8; 1000]).unwrap();
    }
    aof.flush().unwrap();
    let start = std::time::Instant::now();
    while !segments(dir.path())
        .iter()
        .any(|p| p.to_str().unwrap().ends_with("00000000000000000001.seg"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never prepared ahead"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(aof);
    // A crash leaves the prepared file ahead as a blank `.seg`, not `.ready`: an append
    // may have been handed an id in it (in memory) before the crash. (So the last
    // segment is not continued either: ids past it may have been handed out.)
    let mut max_before = 0;
    for p in segments(dir.path()) {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let id: u32 = name[..20].parse().unwrap();
        max_before = max_before.max(id);
        if name.ends_with(".seg.ready") {
            std::fs::rename(
                &p,
                dir.path().join("segments").join(format!("{id:020}.seg")),
            )
            .unwrap();
        }
    }
    let before = segments(dir.path()).len();
    let aof = open(&m, small_cfg(dir.path()));
    let r2 = aof.append_record(b"two").unwrap();
    aof.flush_until(r2).unwrap();
    assert_eq!(
        r2.segment_index(),
        max_before + 1,
        "ids continue past every file on disk"
    );
    assert_eq!(read_back(&aof, r), b"one");
    // The blank file was moved to that id and used, not deleted.
    assert!(segments(dir.path()).len() >= before);
}
