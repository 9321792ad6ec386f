#!/usr/bin/env bash
# Many short soaks at once, in rounds: the harness that reproduced the glommio shard
# hang (one hang in 15 to 240 children before its fix). Each round starts PARALLEL
# copies of tests/soak.rs's child (200 logs, writers, followers, 4 s) and waits; a
# child still running after 60 s is a hang: its threads' stacks (gdb, if installed) go
# to target/soak-hang-PID.txt, it is killed, and the script fails.
#
# usage: scripts/soak-parallel.sh [ROUNDS] [PARALLEL]   (defaults: 40 rounds, 3 at once)
# AOF2_EXECUTOR=glommio (with --features glommio, added here) runs the shards in glommio.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-40}
PARALLEL=${2:-3}
features=()
if [ "${AOF2_EXECUTOR:-}" = glommio ]; then features=(--features glommio); fi
bin=$(cargo test "${features[@]}" --test soak --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build tests/soak.rs"; exit 1; }
logs=$(mktemp -d)
for r in $(seq 1 "$ROUNDS"); do
    pids=()
    for j in $(seq 1 "$PARALLEL"); do
        AOF2_SOAK_CHILD=1 "$bin" --exact child_soak --nocapture --test-threads=1 \
            >"$logs/$j.log" 2>&1 &
        pids+=($!)
    done
    start=$(date +%s)
    while :; do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        if [ $(($(date +%s) - start)) -gt 60 ]; then
            for p in "${pids[@]}"; do
                if kill -0 "$p" 2>/dev/null; then
                    out=target/soak-hang-$p.txt
                    if command -v gdb >/dev/null; then
                        gdb -p "$p" -batch -ex "thread apply all bt 16" >"$out" 2>&1 || true
                    fi
                    for t in /proc/"$p"/task/*; do
                        echo "== $t $(cat "$t/comm") $(cat "$t/wchan")" >>"$out"
                    done
                    kill -9 "$p" || true
                    echo "round $r: child $p hung; stacks in $out"
                fi
            done
            exit 1
        fi
        sleep 1
    done
    for j in $(seq 1 "$PARALLEL"); do
        grep -q "SOAK OK" "$logs/$j.log" || { echo "round $r: a child failed:"; cat "$logs/$j.log"; exit 1; }
    done
    echo "round $r: $PARALLEL soaks ok ($(grep -ho '[0-9]* sleeps ended' "$logs"/*.log | awk '{n += $1} END {print n + 0}') safety-net wake-ups)"
done
rm -rf "$logs"
