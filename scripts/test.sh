#!/usr/bin/env bash
# Runs Swarmcast's whole test suite. First installs the outside peers the interop tests run
# against (aria2, python3-libtorrent, transmission-cli, mktorrent, opentracker) when they are
# missing: a missing tool is a failure, never a skipped test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v aria2c >/dev/null || need+=(aria2)
/usr/bin/python3 -c 'import libtorrent' 2>/dev/null || need+=(python3-libtorrent)
command -v transmission-cli >/dev/null || need+=(transmission-cli)
command -v mktorrent >/dev/null || need+=(mktorrent)
command -v opentracker >/dev/null || need+=(opentracker)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swarmcast-target}"
cargo test --workspace --locked -- --test-threads=2
