#!/usr/bin/env bash
# A longer soak (tests/soak.rs): hundreds of logs, writers and followers, checking that
# memory stays within the back-pressure bound, no descriptor leaks, nothing is lost.
#
# usage: scripts/soak.sh [SECONDS] [LOGS]   (defaults: 600 s, 500 logs)
set -euo pipefail
cd "$(dirname "$0")/.."
AOF2_SOAK_SECS=${1:-600} AOF2_SOAK_LOGS=${2:-500} \
    cargo test --release --test soak hundreds_of_logs -- --nocapture
