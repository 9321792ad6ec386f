//! Tier 2, the archive: segments uploaded in the background, local copies dropped
//! under retention once the store holds them, archived segments read back
//! transparently (and checked), outages that stop no append, the backlog ceiling,
//! releases that reach the store, and credentials that never print.

#[path = "common/archived.rs"]
mod archived;
mod common;

use archived::*;
use bop_rs::aof2::archive::MemStore;
use bop_rs::aof2::config::{
    ArchiveStore, RetentionPolicy, S3Config, S3Credentials, Secret, SegmentId,
};
use bop_rs::aof2::error::AofError;
use bop_rs::aof2::Aof;
use common::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn segments_go_to_the_archive_and_read_back_after_their_local_copies_went() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, arch) = (tmp.path().join("log"), tmp.path().join("archive"));
    let m = archive_manager(ArchiveStore::LocalDir(arch.clone()));
    let aof = open(&m, cfg(&root));
    let want = write(&aof, 1, 600);
    wait_for("uploads and local drops", Duration::from_secs(30), || {
        settled(&aof)
            && aof.flush_metrics().archive_local_drops > 0
            && local_drops_done(&aof, LOCAL_BOUND)
    });
    let gone = only_archived(&aof);
    assert!(gone.len() >= 3, "local copies dropped: {gone:?}");
    // The local directory keeps about the bound: the archived-only segments have no file.
    for id in &gone {
        let name = format!("{id:020}.seg");
        assert!(
            !root.join("segments").join(&name).exists(),
            "{name} still local"
        );
        assert!(root.join("archive").join(format!("{id:020}.stub")).exists());
    }
    // Keys: the log's id, then the segment's file name.
    let log_id = std::fs::read_to_string(root.join("LOG_ID")).unwrap();
    let log_id = log_id.trim();
    assert_eq!(log_id.len(), 32);
    let objects: Vec<_> = std::fs::read_dir(arch.join(log_id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert_eq!(objects.len() as u64, aof.flush_metrics().archive_uploads);
    // Every record reads back, by cursor and by id, local or not.
    assert_eq!(all_records(&aof), want);
    let (rid, p) = &want[0];
    assert!(gone.contains(&(rid.segment_index() as u64)));
    assert_eq!(&read_back(&aof, *rid), p);
    assert!(aof.flush_metrics().archive_hydrations > 0);
    let text = m.prometheus_text();
    for name in [
        "aof_archive_uploads_total",
        "aof_archive_backlog_segments",
        "aof_archive_held_over_bound_bytes",
        "aof_archive_hydrations_total",
    ] {
        assert!(
            text.contains(&format!("{name}{{")),
            "{name} missing:\n{text}"
        );
    }
    aof.close().unwrap();
    drop(aof);

    // Reopened: the stubs keep every segment in place; reads hydrate again.
    let aof = open(&m, cfg(&root));
    assert_eq!(only_archived(&aof), gone);
    assert_eq!(all_records(&aof), want);
    let more = write(&aof, 2, 50);
    let mut all = want.clone();
    all.extend(more);
    assert_eq!(all_records(&aof), all);
    aof.close().unwrap();
    drop(aof);
    drop(m);

    // Without the archive the log refuses to open, naming the stub and the setting.
    let plain = manager();
    let e = Aof::new(plain.handle(), cfg(&root))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("held only by an archive") && e.contains(".stub"),
        "{e}"
    );
}

#[test]
fn an_outage_stops_no_append_and_uploads_resume_when_the_store_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    store.down.store(true, Ordering::SeqCst);
    let m = archive_manager(ArchiveStore::Custom(store.clone()));
    let aof = open(&m, cfg(tmp.path()));
    let want = write(&aof, 3, 600);
    wait_for("a failed upload", Duration::from_secs(10), || {
        aof.flush_metrics().archive_upload_failures > 0
    });
    let mm = aof.flush_metrics();
    assert!(mm.archive_backlog_segments >= 3, "{mm:?}");
    assert_eq!(
        mm.archive_local_drops, 0,
        "nothing leaves before the store holds it"
    );
    wait_for("bytes held over the bound", Duration::from_secs(10), || {
        aof.flush_metrics().archive_held_over_bound_bytes > 0
    });
    assert!(only_archived(&aof).is_empty());
    assert_eq!(all_records(&aof), want, "reads of local copies go on");
    store.down.store(false, Ordering::SeqCst);
    wait_for("uploads after the outage", Duration::from_secs(40), || {
        settled(&aof) && aof.flush_metrics().archive_local_drops > 0
    });
    assert_eq!(aof.flush_metrics().archive_held_over_bound_bytes, 0);
    assert!(!store.keys().is_empty());
    assert_eq!(all_records(&aof), want);
}

#[test]
fn past_the_backlog_ceiling_a_new_segment_is_refused_naming_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    store.down.store(true, Ordering::SeqCst);
    let m = archive_manager(ArchiveStore::Custom(store.clone()));
    let mut c = cfg(tmp.path());
    c.retention = RetentionPolicy::Size {
        max_total_bytes: 64 << 10,
    };
    c.archive_backlog_max_bytes = 192 << 10;
    let aof = open(&m, c);
    let mut refused = None;
    for i in 0..5000 {
        match aof.append_record(&payload(4, i)) {
            Ok(rid) => aof.flush_until(rid).unwrap(),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("appends stop past the ceiling");
    assert!(matches!(e, AofError::ArchiveBacklog { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("in-memory archive store") && msg.contains("archive_backlog_max_bytes"),
        "{msg}"
    );
    // The store is back: uploads catch up and appends go on.
    store.down.store(false, Ordering::SeqCst);
    wait_for("appends after the outage", Duration::from_secs(40), || {
        aof.append_record(b"again").is_ok()
    });
}

#[test]
fn a_tampered_object_is_an_error_naming_segment_key_and_store_never_data() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let m = archive_manager(ArchiveStore::Custom(store.clone()));
    let aof = open(&m, cfg(tmp.path()));
    let want = write(&aof, 5, 600);
    wait_for("local drops", Duration::from_secs(30), || {
        settled(&aof) && aof.flush_metrics().archive_local_drops > 0
    });
    let id = only_archived(&aof)[0];
    store.tamper_gets.store(1, Ordering::SeqCst);
    let e = aof.open_reader(SegmentId::new(id)).unwrap_err();
    assert!(matches!(e, AofError::Archive { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("segment {id}"))
            && msg.contains(&format!("{id:020}.seg"))
            && msg.contains("in-memory archive store")
            && msg.contains("not the one uploaded"),
        "{msg}"
    );
    assert_eq!(aof.flush_metrics().archive_hydration_failures, 1);
    // The next read downloads again, and gets the real thing.
    assert_eq!(all_records(&aof), want);
    // An unreachable store is an error too, never a hang.
    let m2 = aof.flush_metrics();
    assert!(m2.archive_hydrations > 0);
}

#[test]
fn an_unreachable_store_fails_reads_of_archived_segments_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let m = archive_manager(ArchiveStore::Custom(store.clone()));
    let mut c = cfg(tmp.path());
    c.hydrated_cache_bytes = 0;
    let aof = open(&m, c);
    let want = write(&aof, 6, 600);
    wait_for("local drops", Duration::from_secs(30), || {
        settled(&aof) && aof.flush_metrics().archive_local_drops > 0
    });
    let id = only_archived(&aof)[0];
    store.down.store(true, Ordering::SeqCst);
    // Appends and reads of local segments go on.
    let rid = aof.append_record(b"during the outage").unwrap();
    aof.flush_until(rid).unwrap();
    assert_eq!(read_back(&aof, rid), b"during the outage");
    let e = aof.open_reader(SegmentId::new(id)).unwrap_err().to_string();
    assert!(
        e.contains("down") && e.contains(&format!("segment {id}")),
        "{e}"
    );
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(all_records(&aof)[..want.len()], want[..]);
}

#[test]
fn release_deletes_archived_copies_and_archive_retention_releases() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let m = archive_manager(ArchiveStore::Custom(store.clone()));
    let mut c = cfg(tmp.path());
    c.archive_retention = RetentionPolicy::Size {
        max_total_bytes: 512 << 10,
    };
    let aof = open(&m, c);
    let want = write(&aof, 7, 1500);
    wait_for("uploads", Duration::from_secs(30), || settled(&aof));
    // archive_retention keeps the archived copies within 512 KiB: the oldest went.
    wait_for("archive retention", Duration::from_secs(30), || {
        store.bytes() <= 512 << 10 && aof.first_record() > want[0].0
    });
    let first = aof.first_record();
    // What it keeps is about the bound, not less: objects of segments released earlier
    // (still being deleted) count no more.
    let kept_bytes: u64 = aof
        .catalog_snapshot()
        .iter()
        .filter(|s| s.archived)
        .map(|s| s.file_size)
        .sum();
    assert!(
        kept_bytes >= 256 << 10,
        "archive retention kept only {kept_bytes} bytes"
    );
    let e = aof.open_reader(SegmentId::new(0)).unwrap_err();
    assert!(matches!(e, AofError::Released { .. }), "{e}");
    let kept: Vec<_> = want.iter().filter(|r| r.0 >= first).cloned().collect();
    assert_eq!(all_records(&aof), kept);
    // release_before reaches the store: objects and stubs of released segments go.
    let cut = kept[kept.len() / 2].0;
    aof.release_before(cut).unwrap();
    let below = |k: &String| {
        let seg: u64 = k.rsplit('/').next().unwrap()[..20].parse().unwrap();
        seg < cut.segment_index() as u64
    };
    wait_for("deletes in the store", Duration::from_secs(30), || {
        !store.keys().iter().any(below)
    });
    let stubs = std::fs::read_dir(tmp.path().join("archive"))
        .unwrap()
        .count();
    assert_eq!(
        stubs as u64,
        aof.catalog_snapshot().iter().filter(|s| s.archived).count() as u64
    );
    let kept: Vec<_> = want
        .iter()
        .filter(|r| r.0 >= aof.first_record())
        .cloned()
        .collect();
    assert_eq!(all_records(&aof), kept);
}

#[test]
fn credentials_never_print() {
    let planted = "PLANTEDSECRETKEY0123456789";
    let mut s3 = S3Config::default();
    s3.bucket = "b".into();
    s3.credentials = S3Credentials::Static {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new(planted),
        session_token: Some(Secret::new(planted)),
    };
    let text = format!("{s3:?} {:#?}", s3);
    assert!(!text.contains(planted), "{text}");
    assert!(text.contains("redacted"));
}

#[test]
fn compressed_segments_are_archived_as_their_zstd_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let m = archive_manager(ArchiveStore::Custom(store.clone()));
    let mut c = cfg(tmp.path());
    c.compression = bop_rs::aof2::config::Compression::Zstd;
    let aof = open(&m, c);
    let want = write(&aof, 8, 800);
    wait_for(
        "compressed uploads and local drops",
        Duration::from_secs(30),
        || settled(&aof) && aof.flush_metrics().archive_local_drops > 0,
    );
    let keys = store.keys();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.ends_with(".zst")),
        "{keys:?}"
    );
    // Smaller than the raw segments: the compressed files went up.
    let raw: u64 = aof
        .catalog_snapshot()
        .iter()
        .filter(|s| s.archived)
        .map(|s| s.file_size)
        .sum();
    assert!(store.bytes() < raw, "{} of {raw}", store.bytes());
    assert_eq!(all_records(&aof), want);
}

#[test]
fn an_async_stream_reads_archived_segments_without_blocking_its_runtime() {
    use bop_rs::aof2::reader::{SealedSegmentStream, StreamSegment};
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let m = archive_manager(ArchiveStore::Custom(store.clone()));
    let aof = Arc::new(open(&m, cfg(tmp.path())));
    let want = write(&aof, 9, 600);
    wait_for("local drops", Duration::from_secs(30), || {
        settled(&aof) && aof.flush_metrics().archive_local_drops > 0
    });
    assert!(!only_archived(&aof).is_empty());
    let gets = store.gets.load(Ordering::Relaxed);
    store.get_delay_ms.store(100, Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut stream = SealedSegmentStream::new(&aof).unwrap();
    let got = rt.block_on(async {
        // A ticker on the same runtime thread keeps running while segments download.
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                t.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut got = Vec::new();
        let mut waited = Duration::ZERO;
        while got.len() < want.len() {
            let (t0, ticks0) = (Instant::now(), ticks.load(Ordering::Relaxed));
            let seg = stream.next_segment().await.unwrap().expect("more segments");
            if t0.elapsed() >= Duration::from_millis(100) {
                // A download (100 ms in this store): the ticker ran meanwhile.
                waited += t0.elapsed();
                assert!(
                    ticks.load(Ordering::Relaxed) - ticks0 >= 20,
                    "the runtime's thread was blocked for {:?}",
                    t0.elapsed()
                );
            }
            let mut c = match seg {
                StreamSegment::Sealed(c) | StreamSegment::Active(c) => c,
            };
            while let Some(r) = c.next().unwrap() {
                got.push((r.record_id(), r.payload().to_vec()));
            }
        }
        ticker.abort();
        assert!(
            waited >= Duration::from_millis(100),
            "no segment was downloaded"
        );
        got
    });
    assert_eq!(got, want);
    assert!(
        store.gets.load(Ordering::Relaxed) > gets,
        "archived segments were downloaded"
    );
}
