#!/usr/bin/env bash
# Runs the simulated-disk crash checker (tests/sim_crash_checker.rs) over many seeds,
# split across parallel processes. A failure prints the seed and the command that
# replays it with a trace.
#
# usage: scripts/sim-seeds.sh [SEEDS] [JOBS] [START]
#   SEEDS  total seeds (default 1000000)     JOBS  processes (default: CPUs)
#   START  first seed (default 0)
# AOF2_BACKEND=sync|uring restricts the run to one execution model (default: both).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-1000000}
JOBS=${2:-$(nproc)}
START=${3:-0}
cargo test --release --test sim_crash_checker --no-run --quiet
per=$(((SEEDS + JOBS - 1) / JOBS))
echo "sim-seeds: $SEEDS seeds from $START in $JOBS jobs of $per"
pids=()
for j in $(seq 0 $((JOBS - 1))); do
    first=$((START + j * per))
    AOF2_SIM_SEED_START=$first AOF2_SIM_SEEDS=$per \
        cargo test --release --quiet --test sim_crash_checker acknowledged -- --nocapture \
        >"${TMPDIR:-/tmp}/aof2-sim-$j.log" 2>&1 &
    pids+=($!)
done
status=0
for j in "${!pids[@]}"; do
    if wait "${pids[$j]}"; then
        grep -h "seeds on" "${TMPDIR:-/tmp}/aof2-sim-$j.log" || true
    else
        status=1
        echo "sim-seeds: job $j failed:" >&2
        grep -h -A3 "failed:" "${TMPDIR:-/tmp}/aof2-sim-$j.log" >&2 || tail -20 "${TMPDIR:-/tmp}/aof2-sim-$j.log" >&2
    fi
done
exit $status
