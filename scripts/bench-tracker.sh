#!/usr/bin/env bash
# Tracker benchmark: announces per second against `swarmcast tracker` and opentracker (the
# reference) in one run, over HTTP (wrk with a Lua script) and UDP (BEP 15, our own load
# generator: crates/torrent/examples/udp_announce_load.rs), in a swarm of 10,000 peers.
#
# Usage: scripts/bench-tracker.sh [SECONDS_PER_CELL=5]
#
# Every announce names one torrent, a peer on 127.0.0.1 whose port cycles over 1..10000 (so the
# swarm holds 10,000 peers once warm; both trackers are first warmed with 10,000 distinct
# announces), a fresh peer id, left > 0, numwant 50, compact. HTTP: wrk -t1 -c1 and -t2 -c64;
# UDP: 1 and 64 sockets each with one announce in flight. "Memory per peer" is the growth of the
# tracker's resident set while the 10,000 peers were stored, divided by 10,000 (an estimate:
# allocator slack included). opentracker (Debian's, whitelist-only) gets a whitelist with the
# torrent, chroots to a temporary folder and runs as nobody, as in the interop test.
#
# Installs wrk and opentracker with apt (scripts/install-deps.sh) when missing. Environment:
# CARGO_TARGET_DIR (default $HOME/.cache/swarmcast-target); BENCH_OUT also writes the table as
# markdown to this file. Every process this script starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swarmcast-target}"
command -v wrk >/dev/null && command -v opentracker >/dev/null || scripts/install-deps.sh wrk opentracker
cargo build --release -q -p swarmcast
cargo build --release -q -p torrent --example udp_announce_load
bin="$CARGO_TARGET_DIR/release/swarmcast"
load="$CARGO_TARGET_DIR/release/examples/udp_announce_load"

source scripts/bench-lib.sh bench-tracker
chmod 755 "$tmp"

hash_hex=$(printf 'aa%.0s' $(seq 1 20))
hash_url=$(printf '%%AA%.0s' $(seq 1 20))
lua_hash=${hash_url//%/%%} # string.format reads % as a directive
cat >"$tmp/announce.lua" <<EOF
-- Each wrk thread counts on its own; the port cycles over 1..10000 across all of them.
local counter = 0
local id = 0
setup_id = 0
function setup(thread)
  setup_id = setup_id + 1
  thread:set("id", setup_id)
end
function init(args)
  id = tonumber(wrk.thread:get("id")) or 0
end
request = function()
  counter = counter + 1
  local n = id * 7919 + counter
  local path = string.format(
    "/announce?info_hash=${lua_hash}&peer_id=-WRK001-%012d&port=%d&uploaded=0&downloaded=0&left=1000&numwant=50&compact=1",
    n % 1000000000000, n % 10000 + 1)
  return wrk.format("GET", path)
end
EOF

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

ps=$(free_port); po=$(free_port)
"$bin" tracker --listen "127.0.0.1:$ps" --max-peers-returned 50 >"$tmp/swarmcast.log" 2>&1 &
pid_s=$!; pids+=($pid_s)
mkdir -p "$tmp/ot"; chmod 755 "$tmp/ot"
echo "$hash_hex" >"$tmp/ot/whitelist.txt"; chmod 644 "$tmp/ot/whitelist.txt"
printf 'listen.tcp_udp 127.0.0.1:%s\naccess.whitelist /whitelist.txt\ntracker.rootdir %s\ntracker.user nobody\n' \
  "$po" "$tmp/ot" >"$tmp/opentracker.conf"
opentracker -f "$tmp/opentracker.conf" >"$tmp/opentracker.log" 2>&1 &
pid_o=$!; pids+=($pid_o)
wait_port "$ps"; wait_port "$po"

# Both must answer an announce with a bencoded peer list before they are timed.
for port in "$ps" "$po"; do
  reply=$(curl -sf "http://127.0.0.1:$port/announce?info_hash=$hash_url&peer_id=-CHECK0-000000000000&port=1&uploaded=0&downloaded=0&left=1000&numwant=50&compact=1" | tr -d '\000')
  case "$reply" in
    d*peers*) ;;
    *) echo "tracker on port $port answered: $reply" >&2; exit 1 ;;
  esac
done

http() { # port connections seconds
  local t=1; [ "$2" -gt 1 ] && t=2
  wrk -t"$t" -c"$2" -d"${3}s" -s "$tmp/announce.lua" "http://127.0.0.1:$1/" |
    awk '/^Requests\/sec:/ {printf "%.0f", $2} /Non-2xx/ {print "non-2xx answers" > "/dev/stderr"; exit 1}'
}
udp() { # port sockets seconds
  "$load" "127.0.0.1:$1" "$hash_hex" "$3" "$2" 10000 | awk '/^announces\/s/ {print $2}'
}

declare -A r
for who in swarmcast opentracker; do
  if [ $who = swarmcast ]; then port=$ps; pid=$pid_s; else port=$po; pid=$pid_o; fi
  before=$(rss_kib "$pid")
  # Warm up: 10,000 distinct peers stored (ports 1..10000).
  udp "$port" 64 2 >/dev/null
  http "$port" 64 2 >/dev/null
  after=$(rss_kib "$pid")
  r[$who,mem]=$(( (after - before) * 1024 / 10000 ))
  r[$who,h1]=$(http "$port" 1 "$SECS")
  r[$who,h64]=$(http "$port" 64 "$SECS")
  r[$who,u1]=$(udp "$port" 1 "$SECS")
  r[$who,u64]=$(udp "$port" 64 "$SECS")
done

out=$(mktemp)
{
  echo "Announces per second on 127.0.0.1, ${SECS} s per cell, one torrent with 10,000 peers, numwant 50; $(nproc) CPUs; swarmcast $(git rev-parse --short HEAD), opentracker (Debian $(dpkg-query -W -f='${Version}' opentracker 2>/dev/null || echo '?')), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')."
  echo
  echo "| announce | clients | swarmcast tracker | opentracker | swarmcast / opentracker |"
  echo "|---|---:|---:|---:|---:|"
  for row in "HTTP|1|h1" "HTTP|64|h64" "UDP|1|u1" "UDP|64|u64"; do
    IFS='|' read -r proto c k <<<"$row"
    printf "| %s | %s | %s | %s | %.2f |\n" "$proto" "$c" "${r[swarmcast,$k]}" "${r[opentracker,$k]}" \
      "$(echo "${r[swarmcast,$k]} / ${r[opentracker,$k]}" | bc -l)"
  done
  printf "| memory per stored peer (RSS growth / 10,000) | | %s B | %s B | |\n" "${r[swarmcast,mem]}" "${r[opentracker,mem]}"
} >"$out"
cat "$out"
if [ -n "${BENCH_OUT:-}" ]; then cp "$out" "$BENCH_OUT"; fi
rm -f "$out"
