#!/usr/bin/env bash
# SIGKILL torture on a real directory: start a writer (aof2-torture write), kill it with
# SIGKILL at a random moment (during appends, rolls, seals, segment preparation), then
# check what is on disk with `aof2 verify` and reopen it with `aof2-torture check`, which
# reads every record back and compares it with the writer's log of acknowledged ids.
# Repeats on the same directory, so recovery runs over the leftovers of every kill.
#
# usage: scripts/crash-test.sh [ROUNDS] [MAX_MS]
#   ROUNDS   kills (default 200)
#   MAX_MS   longest a writer lives before its kill (default 400)
# AOF2_BACKEND=uring|sync picks the backend; AOF2_CRASH_DIR sets where (default: a new
# directory under /var/tmp, removed on success and kept on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-200}
MAX_MS=${2:-400}
cargo build --release --quiet --bins
BIN=target/release
WORK=${AOF2_CRASH_DIR:-$(mktemp -d /var/tmp/aof2-crash-XXXXXX)}
mkdir -p "$WORK"
LOG="$WORK/log"
ACKS="$WORK/acks"
echo "crash-test: $ROUNDS rounds in $WORK (backend ${AOF2_BACKEND:-auto})"
fail() {
    echo "crash-test: round $1: $2 (directory kept: $WORK)" >&2
    exit 1
}
out=""
for round in $(seq 1 "$ROUNDS"); do
    "$BIN/aof2-torture" write "$LOG" "$ACKS" "$round" 2>"$WORK/writer.err" &
    pid=$!
    ms=$((RANDOM % MAX_MS + 5))
    sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" || true
        fail "$round" "the writer exited on its own: $(cat "$WORK/writer.err")"
    fi
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    if [ -d "$LOG/segments" ]; then
        "$BIN/aof2" verify "$LOG" >"$WORK/verify.out" 2>&1 ||
            fail "$round" "aof2 verify: $(cat "$WORK/verify.out")"
    fi
    out=$("$BIN/aof2-torture" check "$LOG" "$ACKS" 2>&1) || fail "$round" "$out"
done
echo "crash-test: $ROUNDS kills survived; last check: $out"
if [ -z "${AOF2_CRASH_DIR:-}" ]; then rm -rf "$WORK"; fi
