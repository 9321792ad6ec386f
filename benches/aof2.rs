//! `cargo bench`: the same harness as `aof2 bench`, in quick mode unless
//! AOF2_BENCH_FULL=1 (the full run is `cargo run --release -- bench`).

fn main() {
    let quick = std::env::var("AOF2_BENCH_FULL").map_or(true, |v| v != "1");
    let opts = bop_rs::bench::BenchOptions {
        dir: None,
        quick,
        json: false,
        allow_tmpfs: false,
        only: vec![],
        backend: Default::default(),
    };
    if let Err(e) = bop_rs::bench::run(&opts) {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}
