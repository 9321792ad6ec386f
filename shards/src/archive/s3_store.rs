//! The S3 store (`ArchiveStore::S3`, cargo feature `s3`), through the `object_store`
//! crate. Its HTTP client needs Tokio: every request runs on a runtime of the store's
//! own (one worker thread, `aof2-s3`), and the calling thread (an archive thread, or a
//! reader's) waits on a channel for the answer, bounded by the configured request
//! timeout and retries, so a caller's own Tokio runtime is never entered. Objects are
//! created with `If-None-Match: *` after a look that finds none (an S3-compatible
//! server that ignores the header still never sees an overwrite of an object that
//! was there), their SHA-256 in the `sha256` metadata.

use super::config::{S3Config, S3Credentials};
use super::store::{ArchiveBackend, Created, Object, StoreError, StoreErrorKind};
use crate::error::{AofError, AofResult};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// An S3-compatible bucket.
pub struct S3Store {
    rt: tokio::runtime::Runtime,
    s3: Arc<AmazonS3>,
    prefix: String,
    name: String,
    /// How long a caller waits for one call's answer, retries included.
    wait: Duration,
}

impl S3Store {
    /// A store for `c`; fails on a configuration the client refuses (never naming a
    /// credential).
    pub fn new(c: &S3Config) -> AofResult<S3Store> {
        let bad = |m: String| AofError::InvalidConfig(format!("S3 archive: {m}"));
        if c.bucket.is_empty() {
            return Err(bad("S3Config::bucket is empty".into()));
        }
        let mut b = match &c.credentials {
            S3Credentials::FromEnv => AmazonS3Builder::from_env(),
            S3Credentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                let mut b = AmazonS3Builder::new()
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key.expose());
                if let Some(t) = session_token {
                    b = b.with_token(t.expose());
                }
                b
            }
        };
        b = b
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_allow_http(c.allow_http)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(c.request_timeout)
                    .with_connect_timeout(c.request_timeout)
                    .with_allow_http(c.allow_http),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: c.retries as usize,
                retry_timeout: c.request_timeout * (c.retries + 1),
            });
        if let Some(e) = &c.endpoint {
            b = b.with_endpoint(e);
        }
        let s3 = b.build().map_err(|e| {
            bad(format!(
                "bucket {}: {}",
                c.bucket,
                redact(&e.to_string(), c)
            ))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("aof2-s3")
            // Uploads use what the shards and the application leave (as the archive's
            // own threads do).
            .on_thread_start(|| crate::log_queue::background_priority(false))
            .enable_all()
            .build()
            .map_err(|e| AofError::Startup(format!("cannot start the S3 client's runtime: {e}")))?;
        let prefix = c.prefix.trim_matches('/').to_string();
        let name = format!(
            "S3 bucket {}{}{}",
            c.bucket,
            if prefix.is_empty() {
                String::new()
            } else {
                format!(" under {prefix}/")
            },
            c.endpoint
                .as_ref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        );
        // Each attempt may take the request timeout (connect and answer), with the
        // client's backoff between; a margin covers scheduling.
        let wait = c.request_timeout * 2 * (c.retries + 1) + Duration::from_secs(2);
        Ok(S3Store {
            rt,
            s3: Arc::new(s3),
            prefix,
            name,
            wait,
        })
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Runs `f` on the store's runtime and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        what: String,
        f: impl Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        match rx.recv_timeout(self.wait) {
            Ok(r) => r.map_err(|e| classify(&what, e)),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{what}: no answer within {:?}", self.wait),
            )),
        }
    }
}

/// The kind of an `object_store` error, and a message naming the call.
fn classify(what: &str, e: object_store::Error) -> StoreError {
    let kind = match &e {
        object_store::Error::NotFound { .. } => StoreErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented => StoreErrorKind::Refused,
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, format!("{what}: {e}"))
}

/// A message with any credential of `c` in it masked (a client error should never
/// carry one; this makes sure).
fn redact(msg: &str, c: &S3Config) -> String {
    match &c.credentials {
        S3Credentials::Static {
            secret_access_key,
            session_token,
            ..
        } => {
            let mut m = msg.replace(secret_access_key.expose(), "<redacted>");
            if let Some(t) = session_token {
                m = m.replace(t.expose(), "<redacted>");
            }
            m
        }
        S3Credentials::FromEnv => match std::env::var("AWS_SECRET_ACCESS_KEY") {
            Ok(s) if !s.is_empty() => msg.replace(&s, "<redacted>"),
            _ => msg.to_string(),
        },
    }
}

impl ArchiveBackend for S3Store {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn put_new(&self, key: &str, data: &[u8], sha256: &str) -> Result<Created, StoreError> {
        let path = self.path(key);
        let s3 = self.s3.clone();
        let p = path.clone();
        let found = self.call(format!("head {path}"), async move { s3.head(&p).await });
        match found {
            Ok(_) => return Ok(Created::Exists),
            Err(e) if e.kind == StoreErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let s3 = self.s3.clone();
        let payload = PutPayload::from(data.to_vec());
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata("sha256".into()),
            sha256.to_string().into(),
        );
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let p = path.clone();
        let created = self.call(format!("put {path}"), async move {
            match s3.put_opts(&p, payload, opts).await {
                Ok(_) => Ok(Created::New),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Exists),
                Err(e) => Err(e),
            }
        })?;
        Ok(created)
    }

    fn get(&self, key: &str) -> Result<Object, StoreError> {
        let path = self.path(key);
        let s3 = self.s3.clone();
        let p = path.clone();
        let (data, attrs) = self.call(format!("get {path}"), async move {
            let r = s3.get(&p).await?;
            let attrs = r.attributes.clone();
            let bytes = r.bytes().await?;
            Ok((bytes.to_vec(), attrs))
        })?;
        let sha256 = attrs
            .get(&Attribute::Metadata("sha256".into()))
            .map(|v| v.to_string());
        Ok(Object { data, sha256 })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        let s3 = self.s3.clone();
        let p = path.clone();
        match self.call(format!("delete {path}"), async move { s3.delete(&p).await }) {
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}
