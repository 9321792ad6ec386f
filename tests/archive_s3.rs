//! The archive on a real S3-compatible server (`s3s-fs`, which `.ci/run` installs):
//! round trip through `object_store`, hydration after local copies went, the server
//! stopped mid-run (appends go on, reads of archived-only segments fail clearly within
//! the timeout, uploads resume when it returns), a tampered object, and a planted
//! secret that appears in no log line, error, `Debug` output or metric.
//!
//! Each test starts its own server on a free loopback port with a scratch directory.
//! The binary is `AOF2_S3S_FS`, else `s3s-fs` on the `PATH`; without one the tests
//! say so and pass, unless `AOF2_REQUIRE_S3=1` (CI) makes that a failure.
#![cfg(feature = "s3")]

#[path = "common/archived.rs"]
mod archived;
mod common;

use archived::*;
use bop_rs::aof2::config::{ArchiveStore, S3Config, S3Credentials, Secret, SegmentId};
use bop_rs::aof2::error::AofError;
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};
use common::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/s3s.rs"]
mod s3s;
use s3s::{Server, ACCESS, BUCKET, SECRET};

fn s3_config(server: &Server) -> S3Config {
    let mut c = S3Config::default();
    c.bucket = BUCKET.into();
    c.endpoint = Some(server.endpoint());
    c.prefix = "logs/".into();
    c.allow_http = true;
    c.request_timeout = Duration::from_secs(2);
    c.retries = 1;
    c.credentials = S3Credentials::Static {
        access_key_id: ACCESS.into(),
        secret_access_key: Secret::new(SECRET),
        session_token: None,
    };
    c
}

fn s3_manager(server: &Server) -> AofManager {
    archive_manager(ArchiveStore::S3(s3_config(server)))
}

/// Uploads caught up and local copies dropped.
fn dropped(aof: &Aof) -> bool {
    settled(aof) && aof.flush_metrics().archive_local_drops > 0
}

/// The object files the server keeps for `log_id`.
fn objects(server: &Server, log_id: &str) -> Vec<PathBuf> {
    let dir = server.root.join(BUCKET).join("logs").join(log_id);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "seg" || e == "zst"));
    v.sort();
    v
}

/// A scratch directory: on tmpfs where there is one (the server shares the disk and
/// the CPUs with the log under test).
fn scratch() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        false => tempfile::tempdir().unwrap(),
    }
}

#[test]
fn a_log_round_trips_through_a_real_s3_server() {
    let tmp = tempfile::tempdir().unwrap();
    let s3dir = scratch();
    let Some(server) = s3s::start_for_test(&s3dir.path().join("s3")) else {
        return;
    };
    let m = s3_manager(&server);
    let root = tmp.path().join("log");
    let aof = open(&m, cfg(&root));
    let want = write(&aof, 1, 600);
    wait_for("uploads and local drops", Duration::from_secs(60), || {
        dropped(&aof)
    });
    let gone = only_archived(&aof);
    assert!(gone.len() >= 3, "{gone:?}");
    let log_id = std::fs::read_to_string(root.join("LOG_ID")).unwrap();
    let objs = objects(&server, log_id.trim());
    assert_eq!(
        objs.len() as u64,
        aof.flush_metrics().archive_uploads,
        "{objs:?}"
    );
    assert_eq!(all_records(&aof), want);
    aof.close().unwrap();
    drop(aof);
    let aof = open(&m, cfg(&root));
    assert_eq!(only_archived(&aof), gone);
    assert_eq!(all_records(&aof), want);
}

#[test]
fn a_stopped_server_stops_no_append_and_uploads_resume_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let s3dir = scratch();
    let Some(mut server) = s3s::start_for_test(&s3dir.path().join("s3")) else {
        return;
    };
    let m = s3_manager(&server);
    let mut c = cfg(&tmp.path().join("log"));
    c.hydrated_cache_bytes = 0;
    let aof = open(&m, c);
    let mut want = write(&aof, 2, 600);
    wait_for("uploads", Duration::from_secs(60), || dropped(&aof));
    let archived = only_archived(&aof)[0];
    server.stop();
    // Appends and local durability go on.
    let t = Instant::now();
    want.extend(write(&aof, 3, 600));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "appends slowed to {:?}",
        t.elapsed()
    );
    wait_for("a failed upload", Duration::from_secs(30), || {
        aof.flush_metrics().archive_upload_failures > 0
    });
    assert!(aof.flush_metrics().archive_held_over_bound_bytes > 0);
    // A read of an archived-only segment fails clearly, within the timeout.
    let t = Instant::now();
    let e = aof.open_reader(SegmentId::new(archived)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(matches!(e, AofError::Archive { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("segment {archived}")) && msg.contains("S3 bucket aof2-test"),
        "{msg}"
    );
    server.resume().unwrap();
    wait_for("uploads after the outage", Duration::from_secs(60), || {
        let m = aof.flush_metrics();
        m.archive_backlog_segments == 0 && m.archive_held_over_bound_bytes == 0
    });
    assert_eq!(all_records(&aof), want);
}

#[test]
fn a_tampered_object_on_the_server_is_an_error_never_data() {
    let tmp = tempfile::tempdir().unwrap();
    let s3dir = scratch();
    let Some(server) = s3s::start_for_test(&s3dir.path().join("s3")) else {
        return;
    };
    let m = s3_manager(&server);
    let root = tmp.path().join("log");
    let aof = open(&m, cfg(&root));
    write(&aof, 4, 600);
    wait_for("uploads", Duration::from_secs(60), || dropped(&aof));
    let id = only_archived(&aof)[0];
    let log_id = std::fs::read_to_string(root.join("LOG_ID")).unwrap();
    let obj = objects(&server, log_id.trim())
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{id:020}"))
        })
        .expect("the segment's object");
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&obj, &bytes).unwrap();
    let e = aof.open_reader(SegmentId::new(id)).unwrap_err().to_string();
    assert!(
        e.contains(&format!("segment {id}")) && e.contains("not the one uploaded"),
        "{e}"
    );
}

/// Collects every log line the engine writes.
struct Collect(Mutex<Vec<String>>);
impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0.lock().unwrap().push(format!("{}", r.args()));
    }
    fn flush(&self) {}
}

#[test]
fn the_secret_key_appears_in_no_log_error_debug_output_or_metric() {
    let tmp = tempfile::tempdir().unwrap();
    let s3dir = scratch();
    let Some(mut server) = s3s::start_for_test(&s3dir.path().join("s3")) else {
        return;
    };
    static LOGS: std::sync::OnceLock<Arc<Collect>> = std::sync::OnceLock::new();
    let logs = LOGS.get_or_init(|| Arc::new(Collect(Mutex::new(Vec::new()))));
    struct Fwd;
    impl log::Log for Fwd {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            LOGS.get().unwrap().log(r)
        }
        fn flush(&self) {}
    }
    static FWD: Fwd = Fwd;
    if log::set_logger(&FWD).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    let mut text = Vec::new();
    let mut mc = AofManagerConfig::default();
    mc.archive = Some(ArchiveStore::S3(s3_config(&server)));
    text.push(format!("{mc:?}"));
    let m = AofManager::with_config(mc).unwrap();
    let aof = open(&m, cfg(&tmp.path().join("log")));
    write(&aof, 5, 600);
    wait_for("uploads", Duration::from_secs(60), || dropped(&aof));
    // Failures too: the server down, uploads and a read failing.
    server.stop();
    write(&aof, 6, 300);
    wait_for("a failed upload", Duration::from_secs(30), || {
        aof.flush_metrics().archive_upload_failures > 0
    });
    if let Err(e) = aof.open_reader(SegmentId::new(only_archived(&aof)[0])) {
        text.push(e.to_string());
        text.push(format!("{e:?}"));
    }
    // A refused credential.
    let mut bad = s3_config(&server);
    bad.credentials = S3Credentials::Static {
        access_key_id: ACCESS.into(),
        secret_access_key: Secret::new(format!("{SECRET}-wrong")),
        session_token: None,
    };
    server.resume().unwrap();
    text.push(m.prometheus_text());
    text.push(format!("{:?}", aof.flush_metrics()));
    text.push(format!("{aof:?}"));
    text.push(format!("{bad:?}"));
    text.extend(logs.0.lock().unwrap().iter().cloned());
    for t in &text {
        assert!(!t.contains(SECRET), "the secret leaked: {t}");
    }
    // The failures were logged, naming the store.
    assert!(
        text.iter()
            .any(|t| t.contains("uploading segment") && t.contains("S3 bucket aof2-test")),
        "no upload failure was logged"
    );
}
