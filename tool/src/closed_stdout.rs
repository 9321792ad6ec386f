//! A reader that closes the tool's output early (`aof2 dump | head`, `aof2 bench | head`)
//! ends the tool quietly, as `cat` ends, instead of with a panic message: the write
//! fails with `EPIPE` (Rust ignores `SIGPIPE`), `println!` panics, and the panic is
//! recognised here, kept silent, and caught in `main` after the unwinding removed the
//! benchmark's temporary directory.

use bop_rs::aof2::error::AofError;
use std::any::Any;
use std::io;
use std::path::Path;

/// The exit status of a process that `SIGPIPE` ended (128 + 13), as shells report it.
pub const STATUS: u8 = 141;

/// True for the panic `println!` raises when stdout is a closed pipe.
pub fn is_closed_stdout_panic(payload: &(dyn Any + Send)) -> bool {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe")
}

/// True for the error a tool returns when its write to stdout found the pipe closed
/// (`AofError::Io` on `<stdout>`, `EPIPE`): not for a broken pipe anywhere else, such
/// as a store's connection, which is an error to report.
pub fn is_closed_stdout_error(e: &(dyn std::error::Error + 'static)) -> bool {
    match e.downcast_ref::<AofError>() {
        Some(AofError::Io { path, source, .. }) => {
            path == Path::new(STDOUT) && source.kind() == io::ErrorKind::BrokenPipe
        }
        _ => false,
    }
}

/// The path the tools name in an error writing their output.
pub const STDOUT: &str = "<stdout>";

/// Keeps the default panic message for every panic but the closed-stdout one.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_closed_stdout_panic(info.payload()) {
            default(info);
        }
    }));
}
