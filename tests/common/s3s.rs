//! An `s3s-fs` S3-compatible server on loopback, started over a scratch directory: for
//! the archive tests (`tests/archive_s3.rs`) and the benchmark's archive rows. The
//! binary is `AOF2_S3S_FS`, else `s3s-fs` on the `PATH`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The credentials the server accepts.
pub const ACCESS: &str = "AKIDAOF2TEST";
/// (A planted secret: tests grep for it.)
pub const SECRET: &str = "PLANTED-s3-secret-0123456789abcdef";
/// The bucket every server has.
pub const BUCKET: &str = "aof2-test";

/// The `s3s-fs` binary, if there is one.
pub fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AOF2_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// A test's server over `root`, or `None` (and a note) where there is no binary,
/// unless `AOF2_REQUIRE_S3=1` (CI) makes that a failure.
pub fn start_for_test(root: &Path) -> Option<Server> {
    let Some(bin) = binary() else {
        assert!(
            std::env::var("AOF2_REQUIRE_S3").as_deref() != Ok("1"),
            "AOF2_REQUIRE_S3=1 but no s3s-fs binary (AOF2_S3S_FS or PATH)"
        );
        eprintln!("no s3s-fs binary (AOF2_S3S_FS or PATH): nothing to check");
        return None;
    };
    Some(Server::start_with(bin, root).expect("s3s-fs starts"))
}

/// A running `s3s-fs` over a scratch directory (killed when dropped).
pub struct Server {
    bin: PathBuf,
    /// Run at the lowest CPU priority (the benchmark: it stands in for a remote store).
    pub nice: bool,
    /// Its data: `<root>/<bucket>/<key>`.
    pub root: PathBuf,
    /// Its loopback port.
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts `bin` over `root` (creating the bucket's directory) on a free port.
    pub fn start_with(bin: PathBuf, root: &Path) -> std::io::Result<Server> {
        Self::start_niced(bin, root, false)
    }

    /// As `start_with`, at the lowest CPU priority if `nice`.
    pub fn start_niced(bin: PathBuf, root: &Path, nice: bool) -> std::io::Result<Server> {
        std::fs::create_dir_all(root.join(BUCKET))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut s = Server {
            bin,
            nice,
            root: root.to_path_buf(),
            port,
            child: None,
        };
        s.resume()?;
        Ok(s)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and directory; waits until it listens.
    pub fn resume(&mut self) -> std::io::Result<()> {
        let mut cmd = if self.nice {
            let mut c = Command::new("nice");
            c.args(["-n", "19"]).arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        let child = cmd
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS, "--secret-key", SECRET])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(std::io::Error::other("s3s-fs did not listen within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills it (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
