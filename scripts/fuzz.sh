#!/usr/bin/env bash
# Long fuzzing runs of tests/fuzz.rs (the decoders and recovery over mutated corpus
# files), split across parallel processes by seed range.
#
# usage: scripts/fuzz.sh [INPUTS] [JOBS]   (defaults: 1000000 inputs per target, CPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
INPUTS=${1:-1000000}
JOBS=${2:-$(nproc)}
cargo test --release --test fuzz --no-run --quiet
per=$(((INPUTS + JOBS - 1) / JOBS))
pids=()
for j in $(seq 0 $((JOBS - 1))); do
    AOF2_FUZZ_SEED=$((j * per)) AOF2_FUZZ_ITERS=$per \
        cargo test --release --quiet --test fuzz -- --nocapture \
        >"${TMPDIR:-/tmp}/aof2-fuzz-$j.log" 2>&1 &
    pids+=($!)
done
status=0
for j in "${!pids[@]}"; do
    if wait "${pids[$j]}"; then
        grep -h "no panic" "${TMPDIR:-/tmp}/aof2-fuzz-$j.log" || true
    else
        status=1
        echo "fuzz: job $j failed:" >&2
        grep -h -A3 "panicked" "${TMPDIR:-/tmp}/aof2-fuzz-$j.log" >&2 || tail -20 "${TMPDIR:-/tmp}/aof2-fuzz-$j.log" >&2
    fi
done
exit $status
