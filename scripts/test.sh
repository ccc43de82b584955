#!/usr/bin/env bash
# Runs Swarmcast's whole test suite. First installs the outside peers the interop tests run
# against (aria2, python3-libtorrent, transmission-cli, mktorrent, opentracker) when they are
# missing: a missing tool is a failure, never a skipped test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swarmcast-target}"
cargo test --workspace --locked -- --test-threads=2
