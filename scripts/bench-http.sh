#!/usr/bin/env bash
# HTTP serving benchmark: `swarmcast stream origin`, `swarmcast stream edge` (cache warm) and
# nginx (the reference), all serving the same folder on loopback in one run, measured with wrk.
#
# Usage: scripts/bench-http.sh [SECONDS_PER_CELL=5]
#
# The folder holds a movie's two kinds of file at the sizes `stream package` writes: a 4 KB
# manifest (m/manifest.mpd) and a 742 KB segment (m/seg.m4s), random bytes. Rows: the manifest,
# the segment, and a 64 KiB Range request into the segment, each over 1 keep-alive connection
# (wrk -t1 -c1) and over 64 (wrk -t2 -c64). Cells are requests per second (wrk's Requests/sec);
# every server gets the same wrk command. nginx runs with its own config in the temporary folder
# (2 workers, sendfile on, access log off), as a foreground process stopped by PID, and so do
# origin and edge. wrk and the server share this machine's cores, as they do for every server.
#
# Installs wrk and nginx with apt (scripts/install-deps.sh) when missing.
#
# Environment: CARGO_TARGET_DIR (default $HOME/.cache/swarmcast-target); BENCH_OUT also writes
# the table as markdown to this file.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swarmcast-target}"
command -v wrk >/dev/null && command -v nginx >/dev/null || scripts/install-deps.sh wrk nginx
cargo build --release -q -p swarmcast
bin="$CARGO_TARGET_DIR/release/swarmcast"

source scripts/bench-lib.sh bench-http

mkdir -p "$tmp/www/m" "$tmp/nginx"
head -c 3000 /dev/urandom | base64 -w 100 | head -c 4000 >"$tmp/www/m/manifest.mpd"
head -c 742000 /dev/urandom >"$tmp/www/m/seg.m4s"
# nginx workers run as an unprivileged user when started as root: the folder must be readable.
chmod -R a+rX "$tmp"


po=$(free_port); pe=$(free_port); pn=$(free_port)
"$bin" stream origin --dir "$tmp/www" --listen "127.0.0.1:$po" >"$tmp/origin.log" 2>&1 &
pids+=($!)
"$bin" stream edge --origin "http://127.0.0.1:$po" --listen "127.0.0.1:$pe" >"$tmp/edge.log" 2>&1 &
pids+=($!)
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path $tmp/nginx;
  proxy_temp_path $tmp/nginx;
  fastcgi_temp_path $tmp/nginx;
  uwsgi_temp_path $tmp/nginx;
  scgi_temp_path $tmp/nginx;
  server { listen 127.0.0.1:$pn; root $tmp/www; }
}
EOF
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
pids+=($!)
wait_port "$po"; wait_port "$pe"; wait_port "$pn"

# Every server must answer every row's request correctly before it is timed.
for port in "$po" "$pe" "$pn"; do
  for f in manifest.mpd seg.m4s; do
    curl -sf "http://127.0.0.1:$port/m/$f" -o "$tmp/got" && cmp "$tmp/got" "$tmp/www/m/$f" >&2 ||
      { echo "port $port served /m/$f wrong (origin $po, edge $pe, nginx $pn)" >&2; cat "$tmp"/*.log "$tmp"/nginx/error.log >&2; exit 1; }
  done
  n=$(curl -sf -H 'Range: bytes=0-65535' "http://127.0.0.1:$port/m/seg.m4s" | wc -c)
  [ "$n" = 65536 ] || { echo "port $port answered the Range request with $n bytes" >&2; exit 1; }
done

rps() { # port, connections, path, extra wrk args...
  local port=$1 c=$2 path=$3; shift 3
  local t=1; [ "$c" -gt 1 ] && t=2
  wrk -t"$t" -c"$c" -d"${SECS}s" "$@" "http://127.0.0.1:$port$path" | awk '/^Requests\/sec:/ {printf "%.0f", $2}'
}

out=$(mktemp)
{
  echo "HTTP on 127.0.0.1, wrk ${SECS} s per cell, requests per second; $(nproc) CPUs; swarmcast $(git rev-parse --short HEAD), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')."
  echo
  echo "| request | connections | origin | edge (cached) | nginx | origin / nginx | edge / nginx |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
} >"$out"
cat "$out"
for row in "manifest (4 KB)|/m/manifest.mpd|" "segment (742 KB)|/m/seg.m4s|" "Range 64 KiB of the segment|/m/seg.m4s|Range: bytes=0-65535"; do
  IFS='|' read -r name path header <<<"$row"
  for c in 1 64; do
    args=(); [ -n "$header" ] && args=(-H "$header")
    o=$(rps "$po" "$c" "$path" "${args[@]}")
    e=$(rps "$pe" "$c" "$path" "${args[@]}")
    n=$(rps "$pn" "$c" "$path" "${args[@]}")
    line=$(printf "| %s | %s | %s | %s | %s | %.2f | %.2f |" "$name" "$c" "$o" "$e" "$n" \
      "$(echo "$o / $n" | bc -l)" "$(echo "$e / $n" | bc -l)")
    echo "$line" | tee -a "$out"
  done
done
if [ -n "${BENCH_OUT:-}" ]; then cp "$out" "$BENCH_OUT"; fi
rm -f "$out"
