//! Where a manager's archive lives (`AofManagerConfig::archive`): a local directory,
//! an S3-compatible bucket (cargo feature `s3`), or a store the embedding service
//! supplies. Credentials are held in [`Secret`], which never prints its value.

use super::store::ArchiveBackend;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The third tier: where sealed segments are uploaded, and read back from once their
/// local copies are gone.
#[derive(Clone)]
#[non_exhaustive]
pub enum ArchiveStore {
    /// A directory (another disk, a network mount): one file per object, created
    /// without overwriting, synced before the upload counts.
    LocalDir(PathBuf),
    /// An S3-compatible bucket, through the `object_store` crate (cargo feature `s3`).
    #[cfg(feature = "s3")]
    S3(S3Config),
    /// A store the service implements ([`ArchiveBackend`]); the test suite's in-memory
    /// store with injected faults comes in this way.
    Custom(Arc<dyn ArchiveBackend>),
}

impl fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveStore::LocalDir(p) => f.debug_tuple("LocalDir").field(p).finish(),
            #[cfg(feature = "s3")]
            ArchiveStore::S3(c) => f.debug_tuple("S3").field(c).finish(),
            ArchiveStore::Custom(s) => f.debug_tuple("Custom").field(&s.describe()).finish(),
        }
    }
}

impl PartialEq for ArchiveStore {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ArchiveStore::LocalDir(a), ArchiveStore::LocalDir(b)) => a == b,
            #[cfg(feature = "s3")]
            (ArchiveStore::S3(a), ArchiveStore::S3(b)) => a == b,
            (ArchiveStore::Custom(a), ArchiveStore::Custom(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for ArchiveStore {}

/// A credential: compared and cloned like a string, never printed (`Debug` shows
/// `"<redacted>"`), so it stays out of logs, errors and metrics.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The credential itself, for the client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// How the S3 client authenticates.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum S3Credentials {
    /// The standard `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// `AWS_SESSION_TOKEN` environment variables (the default).
    #[default]
    FromEnv,
    /// Given explicitly.
    Static {
        /// The access key id.
        access_key_id: String,
        /// The secret access key.
        secret_access_key: Secret,
        /// A session token, for temporary credentials.
        session_token: Option<Secret>,
    },
}

/// An S3-compatible bucket. Build it from `Default` and assign fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Config {
    /// The bucket (it must exist).
    pub bucket: String,
    /// Its region (default `us-east-1`; most S3-compatible servers ignore it).
    pub region: String,
    /// The endpoint of an S3-compatible server (`http://127.0.0.1:9000`); `None` (the
    /// default) for AWS S3 itself.
    pub endpoint: Option<String>,
    /// Key prefix of every object (default empty): `<prefix>/<log id>/<segment>`.
    pub prefix: String,
    /// Allow plain HTTP (a loopback server); default false.
    pub allow_http: bool,
    /// How long one request may take before it is abandoned and retried (default 5 s).
    pub request_timeout: Duration,
    /// Retries of a failed request by the client (default 2); the archive's own
    /// retries with back-off come on top.
    pub retries: u32,
    /// How to authenticate (default: the `AWS_*` environment variables).
    pub credentials: S3Credentials,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            prefix: String::new(),
            allow_http: false,
            request_timeout: Duration::from_secs(5),
            retries: 2,
            credentials: S3Credentials::FromEnv,
        }
    }
}
