#!/usr/bin/env bash
# Runs Swarmcast's whole test suite. First installs the outside peers the interop tests run
# against (aria2, python3-libtorrent, transmission-cli, mktorrent, opentracker) when they are
# missing (and the web player's npm modules): a missing tool is a failure, never a skipped test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

# The web player's npm modules (dash.js, playwright-core), reinstalled when missing or older than
# the lock file.
if ! command -v npm >/dev/null; then
  echo "npm is missing: install the Debian packages nodejs and npm (scripts/install-deps.sh)" >&2
  exit 1
fi
if [ ! -f web/node_modules/.package-lock.json ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
  npm ci --prefix web --no-audit --no-fund
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swarmcast-target}"
cargo test --workspace --locked -- --test-threads=2
