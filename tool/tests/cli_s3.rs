//! `aof2 verify` and `aof2 dump` against a log whose segments only a real S3-compatible
//! server (`s3s-fs`, which `.ci/run` installs) still holds: the objects fetched with
//! `--s3-bucket` and the `AWS_*` environment variables, checked, and printed
//! byte-for-byte; wrong credentials are an error naming the bucket, never the secret.
//!
//! Without an `s3s-fs` binary (`AOF2_S3S_FS` or the `PATH`) the test says so and
//! passes, unless `AOF2_REQUIRE_S3=1` (CI) makes that a failure.
#![cfg(feature = "s3")]

#[path = "../../tests/common/mod.rs"]
mod common;

#[path = "../../tests/common/archived.rs"]
mod archived;

#[path = "../../tests/common/s3s.rs"]
mod s3s;

use archived::*;
use bop_rs::aof2::config::{ArchiveStore, S3Config, S3Credentials, Secret};
use common::*;
use s3s::{Server, ACCESS, BUCKET, SECRET};
use std::process::{Command, Output};
use std::time::Duration;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `aof2 <args>` with the bucket's flags and the given secret in the environment.
fn aof2_s3(server: &Server, secret: &str, args: &[&str]) -> Output {
    let endpoint = server.endpoint();
    Command::new(env!("CARGO_BIN_EXE_aof2"))
        .args(args)
        .args(["--s3-bucket", BUCKET, "--s3-endpoint", &endpoint])
        .args(["--s3-prefix", "logs/", "--s3-allow-http"])
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .expect("aof2 runs")
}

#[test]
fn verify_and_dump_read_segments_only_an_s3_bucket_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(server) = s3s::start_for_test(&tmp.path().join("s3")) else {
        return;
    };
    let mut s3 = S3Config::default();
    s3.bucket = BUCKET.into();
    s3.endpoint = Some(server.endpoint());
    s3.prefix = "logs/".into();
    s3.allow_http = true;
    s3.credentials = S3Credentials::Static {
        access_key_id: ACCESS.into(),
        secret_access_key: Secret::new(SECRET),
        session_token: None,
    };
    let root = tmp.path().join("log");
    let m = archive_manager(ArchiveStore::S3(s3));
    let aof = open(&m, cfg(&root));
    let want = write(&aof, 7, 400);
    wait_for("uploads and local drops", Duration::from_secs(60), || {
        settled(&aof) && aof.flush_metrics().archive_local_drops >= 2
    });
    aof.close().unwrap();
    drop(aof);
    drop(m);
    let r = root.to_str().unwrap();

    let out = aof2_s3(&server, SECRET, &["verify", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = text(&out.stdout);
    assert!(v.contains("object fetched and checked"), "{v}");
    assert!(!v.contains("stub only"), "{v}");

    let out = aof2_s3(&server, SECRET, &["dump", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), want.len());
    for (line, (rid, p)) in lines.iter().zip(&want) {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        assert_eq!(f[0], rid.to_string(), "{line}");
        assert_eq!(f[2], p.len().to_string(), "{line}");
        assert_eq!(f[3], p.escape_ascii().to_string(), "record {rid}");
    }

    // A wrong secret: an error naming the bucket, never either key.
    let wrong = "WRONG-secret-for-the-tool-test";
    let out = aof2_s3(&server, wrong, &["dump", r]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains(BUCKET), "{e}");
    assert!(!e.contains(wrong) && !e.contains(SECRET), "{e}");

    // The flags need a bucket, and a directory and a bucket together are refused.
    let out = Command::new(env!("CARGO_BIN_EXE_aof2"))
        .args(["dump", r, "--s3-endpoint", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--s3-bucket"));
    let out = aof2_s3(&server, SECRET, &["dump", r, "--archive-dir", r]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot be used with"));
}
