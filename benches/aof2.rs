//! `cargo bench`: the same harness as `aof2 bench` (it lives on the binary's side), in
//! quick mode unless AOF2_BENCH_FULL=1 (the full run is `cargo run --release -- bench`).

fn main() {
    let full = std::env::var("AOF2_BENCH_FULL").is_ok_and(|v| v == "1");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_aof2"));
    cmd.arg("bench");
    if !full {
        cmd.arg("--quick");
    }
    let status = cmd.status().expect("the aof2 binary runs");
    if !status.success() {
        eprintln!("bench failed: {status}");
        std::process::exit(1);
    }
}
