//! What every example shares: where it writes.

/// The directory given as the first argument (created if missing), or a temporary one
/// (removed when the returned guard drops).
pub fn example_dir() -> std::io::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    match std::env::args_os().nth(1) {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            Ok((d.into(), None))
        }
        None => {
            let t = tempfile::tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}
