//! The `aof2` command-line tool.

use bop_rs::bench::{self, BenchOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "aof2",
    version,
    about = "AOF2 append-only log: benchmark and tools"
)]
struct Cli {
    /// Log the engine's messages at info level (-v) or debug level (-vv) to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark workloads (W1-W4), each against a raw baseline measured in the
    /// same run on the same directory, and print a table of figures and ratios.
    Bench {
        /// Directory to run in (a temporary directory is created inside and removed).
        /// Default: the system temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A few-second smoke run with smaller counts.
        #[arg(long)]
        quick: bool,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
        /// Run on tmpfs anyway (where fdatasync is a no-op).
        #[arg(long)]
        allow_tmpfs: bool,
        /// Run only these workloads (comma-separated: W1,W2,W3,W4).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

struct StderrLogger;
impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{}: {}", r.level().as_str().to_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    });
    let result = match cli.command {
        Command::Bench {
            dir,
            quick,
            json,
            allow_tmpfs,
            only,
        } => bench::run(&BenchOptions {
            dir,
            quick,
            json,
            allow_tmpfs,
            only,
        })
        .map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aof2: {e}");
            ExitCode::FAILURE
        }
    }
}
