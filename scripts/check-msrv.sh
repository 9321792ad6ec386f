#!/usr/bin/env bash
# Each workspace member's rust-version must be at least the highest rust-version any
# dependency it resolves to declares (normal, build and dev dependencies, every
# feature), from `cargo metadata`; no other toolchain is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --all-features --locked | python3 -c '
import json, sys
m = json.load(sys.stdin)
ours = set(m["workspace_members"])
pkgs = {p["id"]: p for p in m["packages"]}
deps = {n["id"]: [d["pkg"] for d in n["deps"]] for n in m["resolve"]["nodes"]}
def key(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
bad = []
for member in sorted(ours, key=lambda i: pkgs[i]["name"]):
    seen, todo = set(), list(deps[member])
    while todo:
        d = todo.pop()
        if d in seen or d in ours:
            continue
        seen.add(d)
        todo.extend(deps.get(d, []))
    declared = [(pkgs[d]["rust_version"], pkgs[d]["name"]) for d in seen if pkgs[d].get("rust_version")]
    need = max(declared, key=lambda t: key(t[0])) if declared else ("1.0", "-")
    have = pkgs[member].get("rust_version")
    name = pkgs[member]["name"]
    if have is None or key(have) < key(need[0]):
        bad.append(f"{name} declares {have}, but {need[1]} needs {need[0]}")
    else:
        print(f"{name}: rust-version {have}, at least its dependencies need (highest: {need[1]} {need[0]})")
if bad:
    sys.exit("rust-version too low: " + "; ".join(bad))
'
