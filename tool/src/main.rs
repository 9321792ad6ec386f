//! The `aof2` command-line tool.

mod bench;
mod closed_stdout;
mod tools;

use bench::BenchOptions;
use bop_rs::aof2::config::{ArchiveStore, IoBackend, RecordId};
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
    /// Run the benchmark workloads, each against a raw baseline measured in the same
    /// run on the same directory, and print a table of figures and ratios: W1 buffered
    /// appends, W1Z the same with zstd compression in the background, W2 durable
    /// latency, W3 group commit, W4 durable bandwidth, W5 many logs, R1 cursor reads,
    /// R2 follower wake-up, R3 recovery and verify, S1 small logs, Z1 compressed
    /// segments, C1 commit paths, P1 okaywal (with --features peers).
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
        /// Run only these workloads (comma-separated: W1,W1B,W1Z,W2,W2P,W3,W4,W5,R1,R2,R3,S1,Z1,C1,T1,P1;
        /// R1 and R3 run together, W1 includes W1B and W1Z, W2 includes W2P).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// I/O backend: auto (io_uring, else the portable one), uring (strict) or sync.
        /// Default: auto, or the AOF2_BACKEND environment variable.
        #[arg(long, value_parser = parse_backend)]
        backend: Option<IoBackend>,
        /// Write SVG plots into this directory (created if missing): latency percentile
        /// curves (W2, P1) and the throughput rows' ratios to their baselines.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Print a log's records in order: ID, timestamp (ns), length, payload (escaped).
    Dump {
        /// The log directory (the `root_dir` of the log).
        dir: PathBuf,
        /// Start at this record (SEGMENT:OFFSET as printed, e.g. 0:64, or the raw u64).
        #[arg(long, value_parser = tools::parse_record_id)]
        from: Option<RecordId>,
        /// Print at most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Print payloads as hex instead of escaped text.
        #[arg(long)]
        hex: bool,
        /// Where segments only the archive holds are read from (checked against their
        /// stubs).
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Check every frame, footer and header of a log; print the first problem (segment,
    /// offset, path) and exit non-zero if there is one.
    Verify {
        /// The log directory.
        dir: PathBuf,
        /// Print one JSON object (segments and the outcome) instead of text.
        #[arg(long)]
        json: bool,
        /// Where segments only the archive holds are fetched from, to check their
        /// objects too (without it, only their stubs are checked).
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Print a log's segments (state, sizes, records) and totals.
    Stat {
        /// The log directory.
        dir: PathBuf,
        /// Print one JSON object (segments and totals) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the last records of a log; with -f, keep printing new ones as a writer in
    /// another process appends them (read-only: the writer's lock is not taken).
    Tail {
        /// The log directory.
        dir: PathBuf,
        /// Keep following the log until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// How often to look for new records while following (milliseconds).
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
}

/// The log's archive, for the tools that read archived-only segments: a directory
/// (`ArchiveStore::LocalDir`) or an S3-compatible bucket (`ArchiveStore::S3`, in a
/// build with the `s3` feature; credentials from the `AWS_*` environment variables).
#[derive(clap::Args)]
struct ArchiveArgs {
    /// The log's archive directory (`ArchiveStore::LocalDir`).
    #[arg(long, conflicts_with = "s3_bucket")]
    archive_dir: Option<PathBuf>,
    /// The log's S3 bucket (`ArchiveStore::S3`; credentials from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`).
    #[arg(long)]
    s3_bucket: Option<String>,
    /// The endpoint of an S3-compatible server (default: AWS S3 itself).
    #[arg(long, requires = "s3_bucket")]
    s3_endpoint: Option<String>,
    /// The bucket's region.
    #[arg(long, requires = "s3_bucket", default_value = "us-east-1")]
    s3_region: String,
    /// The key prefix the log's manager was configured with (`S3Config::prefix`).
    #[arg(long, requires = "s3_bucket", default_value = "")]
    s3_prefix: String,
    /// Allow plain HTTP (a loopback server).
    #[arg(long, requires = "s3_bucket")]
    s3_allow_http: bool,
}

impl ArchiveArgs {
    /// The store these arguments name, if any.
    fn store(self) -> Result<Option<ArchiveStore>, String> {
        if let Some(d) = self.archive_dir {
            return Ok(Some(ArchiveStore::LocalDir(d)));
        }
        let Some(bucket) = self.s3_bucket else {
            return Ok(None);
        };
        #[cfg(feature = "s3")]
        {
            let mut c = bop_rs::aof2::config::S3Config::default();
            c.bucket = bucket;
            c.endpoint = self.s3_endpoint;
            c.region = self.s3_region;
            c.prefix = self.s3_prefix;
            c.allow_http = self.s3_allow_http;
            Ok(Some(ArchiveStore::S3(c)))
        }
        #[cfg(not(feature = "s3"))]
        Err(format!(
            "--s3-bucket {bucket}: this aof2 was built without S3 support (build it with \
             `cargo install --path tool --features s3`)"
        ))
    }
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
    closed_stdout::install_panic_hook();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.command))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) if closed_stdout::is_closed_stdout_error(&*e) => {
            ExitCode::from(closed_stdout::STATUS)
        }
        Ok(Err(e)) => {
            eprintln!("aof2: {e}");
            ExitCode::FAILURE
        }
        Err(p) if closed_stdout::is_closed_stdout_panic(&*p) => {
            ExitCode::from(closed_stdout::STATUS)
        }
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Runs one command.
fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Bench {
            dir,
            quick,
            json,
            allow_tmpfs,
            only,
            backend,
            plot,
        } => bench::run(&BenchOptions {
            plot,
            dir,
            quick,
            json,
            allow_tmpfs,
            only,
            backend: backend.unwrap_or_default(),
        })
        .map(|_| ()),
        Command::Dump {
            dir,
            from,
            limit,
            hex,
            archive,
        } => archive.store().map_err(Into::into).and_then(|a| {
            tools::dump(&dir, from, limit, hex, a.as_ref())
                .map(|_| ())
                .map_err(Into::into)
        }),
        Command::Verify {
            dir,
            json: false,
            archive,
        } => archive.store().map_err(Into::into).and_then(|a| {
            tools::verify(&dir, a.as_ref())
                .map(|_| ())
                .map_err(Into::into)
        }),
        Command::Verify {
            dir,
            json: true,
            archive,
        } => archive
            .store()
            .map_err(Into::into)
            .and_then(|a| tools::verify_json(&dir, a.as_ref()).map_err(Into::into)),
        Command::Stat { dir, json: false } => tools::stat(&dir).map(|_| ()).map_err(Into::into),
        Command::Stat { dir, json: true } => tools::stat_json(&dir).map_err(Into::into),
        Command::Tail {
            dir,
            follow,
            lines,
            interval_ms,
        } => tools::tail(
            &dir,
            lines,
            follow,
            std::time::Duration::from_millis(interval_ms.max(1)),
        )
        .map_err(Into::into),
    }
}

fn parse_backend(s: &str) -> Result<IoBackend, String> {
    IoBackend::parse(s).ok_or_else(|| format!("{s:?}: expected auto, uring or sync"))
}
