#!/usr/bin/env bash
# Runs the overlay simulations whose numbers are in docs/overlay-sim.md and the README, writes
# each run's JSON to docs/overlay-sim/, and prints the tables (markdown).
#
# Usage: scripts/sim-overlay.sh [--quick]     (--quick: skips the 100,000-node run)
# Needs a release build: cargo build --release -p swarmcast (SWARMCAST=path overrides the binary).
# Takes about 10 minutes on a 2-core machine, plus ~2 minutes and ~0.6 GB for 100,000 nodes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SC="${SWARMCAST:-${CARGO_TARGET_DIR:-$ROOT/target}/release/swarmcast}"
OUT="$ROOT/docs/overlay-sim"
[[ -x "$SC" ]] || { echo "no release binary at $SC: run cargo build --release -p swarmcast" >&2; exit 1; }
mkdir -p "$OUT"
run() { # name, args...
    local name="$1"; shift
    echo "sim $name: swarmcast sim overlay $*" >&2
    "$SC" sim overlay "$@" --json "$OUT/$name.json" >"$OUT/$name.txt" 2>/dev/null
}
for seed in 1 2 3; do run "n1000-s$seed" --nodes 1000 --anchors 3 --seed "$seed"; done
for g in 80 250 500; do for seed in 1 2; do
    run "n1000-graft$g-s$seed" --nodes 1000 --anchors 3 --seed "$seed" --newcomers 0 --graft-timeout-ms "$g"
done; done
for k in 4 5 6 8 11; do run "n10000-k$k-c0.8" --nodes 10000 --anchors 3 --seed 1 --crash 0.8 --active-max "$k"; done
for c in 0.5 0.7 0.9; do run "n10000-k8-c$c" --nodes 10000 --anchors 3 --seed 1 --crash "$c"; done
for c in 0.8 0.9; do run "n10000-k8-c$c-s2" --nodes 10000 --anchors 3 --seed 2 --crash "$c"; done
if [[ "${1:-}" != "--quick" ]]; then
    run "n100000-k8-c0.8" --nodes 100000 --anchors 3 --seed 1 --crash 0.8
fi
python3 "$ROOT/scripts/sim_overlay_tables.py" "$OUT"
