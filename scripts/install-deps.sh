#!/usr/bin/env bash
# Installs, with apt, the outside tools Swarmcast's tests and benchmarks run against, when they
# are missing. Usage: scripts/install-deps.sh [EXTRA_DEBIAN_PACKAGE...]
# Always checked: aria2, python3-libtorrent, transmission-cli, qbittorrent-nox, mktorrent,
# opentracker, iproute2, bsdutils (`script`, a pty for the chat terminal UI test), ffmpeg (DASH
# packaging, ffprobe), chromium, nodejs and npm (the web player's browser test; its npm modules:
# `npm ci --prefix web`), dnsutils (`dig`, the CDN router's DNS test); and rqbit, which Debian
# does not package, built from crates.io with `cargo install --locked` (about 4 minutes on 2
# cores, once).
set -euo pipefail
need=()
command -v aria2c >/dev/null || need+=(aria2)
/usr/bin/python3 -c 'import libtorrent' 2>/dev/null || need+=(python3-libtorrent)
command -v transmission-cli >/dev/null || need+=(transmission-cli)
command -v qbittorrent-nox >/dev/null || need+=(qbittorrent-nox)
command -v mktorrent >/dev/null || need+=(mktorrent)
command -v opentracker >/dev/null || need+=(opentracker)
command -v tc >/dev/null || need+=(iproute2)
command -v script >/dev/null || need+=(bsdutils)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v dig >/dev/null || need+=(dnsutils)
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v rqbit >/dev/null; then
  echo "installing: rqbit 9.1.0 (cargo install, a few minutes)"
  build=$(mktemp -d)
  cargo install -q --locked rqbit --version 9.1.0 --target-dir "$build"
  rm -rf "$build"
fi
