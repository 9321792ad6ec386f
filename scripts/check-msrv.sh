#!/usr/bin/env bash
# The workspace's rust-version must be at least the highest rust-version any resolved
# dependency declares (from `cargo metadata`; no other toolchain is needed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --all-features --locked | python3 -c '
import json, sys
m = json.load(sys.stdin)
ours = set(m["workspace_members"])
def key(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
declared = {p["name"]: p.get("rust_version") for p in m["packages"] if p["id"] in ours}
need = max(((p["rust_version"], p["name"]) for p in m["packages"]
            if p["id"] not in ours and p.get("rust_version")), key=lambda t: key(t[0]))
bad = [(n, v) for n, v in declared.items() if v is None or key(v) < key(need[0])]
if bad:
    sys.exit(f"rust-version too low: {bad}; {need[1]} declares {need[0]}")
ours_v = declared["bop-rs"]
print(f"MSRV {ours_v}: at least what every dependency needs (highest: {need[1]} {need[0]})")
'
