#!/usr/bin/env bash
# Longer soaks: tests/soak.rs (hundreds of logs, writers and followers, checking that
# memory stays within the back-pressure bound, no descriptor leaks, nothing is lost),
# then tests/shard_tasks.rs's task soak (64 tasks on a shard, 1 and 16 logs,
# DEFER_TASKRUN on and off, 60 s per case by default).
#
# usage: scripts/soak.sh [SECONDS] [LOGS] [TASK_SECONDS]   (defaults: 600 s, 500 logs, 60 s)
set -euo pipefail
cd "$(dirname "$0")/.."
AOF2_SOAK_SECS=${1:-600} AOF2_SOAK_LOGS=${2:-500} \
    cargo test --release --test soak hundreds_of_logs -- --nocapture
AOF2_TASK_SOAK_SECS=${3:-60} \
    cargo test --release --test shard_tasks soak_64_tasks -- --nocapture
