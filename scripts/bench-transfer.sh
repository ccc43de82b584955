#!/usr/bin/env bash
# One seed -> one leecher over loopback, timed, for the BitTorrent benchmark:
#
#   libtorrent -> aria2c      (the reference; aria2c finds the seed through `swarmcast tracker`;
#                              also reported without its start-up and tracker round trip: from its
#                              log's first connection to the seed to its last line)
#   libtorrent -> libtorrent  (the reference for both sides: tests/peers/lt_peer.py get)
#   libtorrent -> swarmcast   (`swarmcast get --peer`)
#   swarmcast  -> libtorrent  (the seed side against the same leecher)
#   swarmcast  -> swarmcast   (`swarmcast seed` + `swarmcast get --peer`)
#   the disk alone            (every run: the file read with the page cache dropped, and
#                              written with an fsync: the floor of a cold seed and a leecher)
#
# Usage: scripts/bench-transfer.sh [SIZE_MIB=1024] [RUNS=1]
#
# A random file of SIZE_MIB MiB and a torrent with 1 MiB pieces are made in a temporary
# directory under /tmp (removed on exit). For every case and run: start the seed, wait until it
# has checked its data (and, for aria2c, until the tracker lists it), drop the page cache when
# running as root, then time the leecher from start to exit (exit = complete and every piece
# verified), record its peak RSS (GNU time's %M, which is the kernel's ru_maxrss), and `cmp` the
# result against the original. Reports the median seconds over RUNS, MiB/s, the speed relative
# to libtorrent -> libtorrent, and the highest peak RSS seen.
#
# Environment:
#   CARGO_TARGET_DIR   where to build (default $HOME/.cache/swarmcast-target)
#   BENCH_OUT          also write the result table as markdown to this file
#   BENCH_TIMEOUT      seconds a leecher may take before it counts as failed (default 600)
#   BENCH_CASES        run only these cases, space-separated (default: all): lt-aria2 lt-lt
#                      lt-swarmcast swarmcast-lt swarmcast-swarmcast
#   BENCH_ENCRYPTION   `require`: every libtorrent and swarmcast peer requires protocol encryption
#                      with an RC4 payload (LT_ENCRYPTION=require, --encryption require); the
#                      aria2c case is left out (default: each program's own default)
#
# Every process this script starts runs under `timeout` (its own process group), is tracked by
# PID, and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SIZE_MIB=${1:-1024}
RUNS=${2:-1}
LEECH_TIMEOUT=${BENCH_TIMEOUT:-600}
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || { echo "SIZE_MIB must be a positive integer" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 2; }

PY=/usr/bin/python3
HELPER=$ROOT/scripts/bench_helper.py
LT_PEER=$ROOT/tests/peers/lt_peer.py
# Longest a seed or tracker may live: a backstop should this script be killed outright.
SERVICE_LIFETIME=$((LEECH_TIMEOUT + 600))

# --- tools -------------------------------------------------------------------------------------
bash "$ROOT/scripts/install-deps.sh" time diffutils

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swarmcast-target}"
echo "building swarmcast (release) in $CARGO_TARGET_DIR ..."
cargo build --release --locked -p swarmcast
SC=$CARGO_TARGET_DIR/release/swarmcast

# --- processes and cleanup ----------------------------------------------------------------------
WORK=$(mktemp -d /tmp/swarmcast-bench.XXXXXX)
PIDS=()

# stop PID: TERM to a `timeout` we started (it passes the signal on to its process group), then
# KILL if it is still there after 5 s.
stop() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# forget PID: drop a reaped PID from PIDS so that cleanup never signals a reused PID.
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop "$pid"; done
  PIDS=()
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn LOG CMD...: start CMD in the background under `timeout`, output to LOG; sets SPAWNED.
spawn() {
  local log=$1
  shift
  timeout -k 5 "$SERVICE_LIFETIME" "$@" >"$log" 2>&1 &
  SPAWNED=$!
  PIDS+=("$SPAWNED")
}

# wait_for PID LOG PATTERN SECS: wait until LOG matches PATTERN while PID lives.
wait_for() {
  local pid=$1 log=$2 pattern=$3 secs=$4 i
  for ((i = 0; i < secs * 10; i++)); do
    grep -qE "$pattern" "$log" 2>/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: process exited before it was ready; its log:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "error: not ready after $secs s; its log:" >&2
  cat "$log" >&2
  return 1
}

CACHE_DROPPED=no
if [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/vm/drop_caches ]; then CACHE_DROPPED=yes; fi
drop_cache() {
  if [ "$CACHE_DROPPED" = yes ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches
  fi
}

# --- data ----------------------------------------------------------------------------------------
read -r TRACKER_PORT SEED_PORT LEECH_PORT < <($PY "$HELPER" free-ports 3)
NAME=bench-${SIZE_MIB}MiB.bin
mkdir -p "$WORK/data"
DATA=$WORK/data/$NAME
echo "making $SIZE_MIB MiB of random data in $WORK ..."
head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$DATA"
# aria2c cannot be handed a peer, so its torrent names our tracker; the others dial the seed
# directly and use the same torrent without trackers (same info-hash: announce is outside info).
mktorrent -l 20 -a "http://127.0.0.1:$TRACKER_PORT/announce" -o "$WORK/tracked.torrent" "$DATA" >/dev/null
$PY "$HELPER" strip-announce "$WORK/tracked.torrent" "$WORK/plain.torrent"

# --- one leecher run ------------------------------------------------------------------------------
# leech CASE RUN CMD...: time CMD (which downloads into $WORK/out), check the bytes, and append
# "case seconds rss_kib ok|FAIL" to $WORK/results.
leech() {
  local case=$1 run=$2 pid rc=0 secs rss status=ok
  shift 2
  rm -f "$WORK/time"
  drop_cache
  timeout -k 5 "$LEECH_TIMEOUT" /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" \
    >"$WORK/leech-$case-$run.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  # GNU time writes "Command exited with non-zero status N" first when the command fails.
  read -r secs rss < <(tail -n 1 "$WORK/time" 2>/dev/null || true) || true
  secs=${secs:-0}
  rss=${rss:-0}
  if [ "$rc" -ne 0 ]; then
    echo "  $case run $run: leecher exited with status $rc (124: timed out); log tail:" >&2
    tail -n 5 "$WORK/leech-$case-$run.log" >&2
    status=FAIL
  elif ! cmp -s "$DATA" "$WORK/out/$NAME"; then
    echo "  $case run $run: downloaded file differs from the original" >&2
    status=FAIL
  fi
  printf '  %-24s run %d: %6.2f s, peak RSS %6.1f MiB, %s\n' \
    "$case" "$run" "$secs" "$(awk -v k="$rss" 'BEGIN{print k/1024}')" "$status"
  echo "$case $secs $rss $status" >>"$WORK/results"
  rm -rf "$WORK/out"
}

run_lt_aria2() {
  local run=$1 tracker seed
  spawn "$WORK/tracker.log" "$SC" tracker --listen "127.0.0.1:$TRACKER_PORT"
  tracker=$SPAWNED
  wait_for "$tracker" "$WORK/tracker.log" '^tracker on' 30
  spawn "$WORK/seed.log" "$PY" "$LT_PEER" seed "$WORK/tracked.torrent" "$WORK/data" "$SEED_PORT"
  seed=$SPAWNED
  wait_for "$seed" "$WORK/seed.log" '^ready' 180
  timeout 60 "$PY" "$HELPER" wait-peer "$TRACKER_PORT" "$WORK/tracked.torrent" 50
  leech lt-aria2 "$run" aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
    --enable-peer-exchange=false --seed-time=0 --file-allocation=none --disable-ipv6=true \
    --listen-port="$LEECH_PORT" --dir="$WORK/out" --summary-interval=0 \
    --console-log-level=warn --log="$WORK/aria2-$run.log" --log-level=info \
    "$WORK/tracked.torrent"
  # The transfer alone: from aria2c's first connection to the seed to its last log line.
  local transfer
  transfer=$($PY - "$WORK/aria2-$run.log" "$SEED_PORT" <<'PYEOF'
import re, sys
from datetime import datetime
stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) ")
first = last = None
for line in open(sys.argv[1], errors="replace"):
    m = stamp.match(line)
    if not m:
        continue
    t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
    if first is None and f"127.0.0.1:{sys.argv[2]}" in line and "onnect" in line:
        first = t
    last = t
print(f"{(last - first).total_seconds():.2f}" if first and last else "0")
PYEOF
)
  local status=ok
  [ "$transfer" = 0 ] && status=FAIL
  printf '  %-24s run %d: %6.2f s (from the first connection to the seed)\n' lt-aria2-transfer "$run" "$transfer"
  echo "lt-aria2-transfer $transfer 0 $status" >>"$WORK/results"
  stop "$seed"
  stop "$tracker"
}

# The machine's own floor, each run: reading the file with the page cache dropped (what a seed
# must do), and writing it with an fsync at the end (what a leecher must do). The virtual disk
# here varies between runs (cold reads of 1 GiB took 0.5-2.5 s in one afternoon), so each
# run's transfers are printed beside it.
disk_floor() {
  local run=$1 t0 t1 secs
  drop_cache
  t0=$(date +%s.%N)
  cat "$DATA" >/dev/null
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  printf '  %-24s run %d: %6.2f s\n' disk-read "$run" "$secs"
  echo "disk-read $secs 0 ok" >>"$WORK/results"
  t0=$(date +%s.%N)
  dd if="$DATA" of="$WORK/copy" bs=1M conv=fsync status=none
  t1=$(date +%s.%N)
  rm -f "$WORK/copy"
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  printf '  %-24s run %d: %6.2f s\n' disk-write "$run" "$secs"
  echo "disk-write $secs 0 ok" >>"$WORK/results"
}

# The two leechers that can be handed the seed's address, as commands (after CASE RUN).
LT_GET=("$PY" "$LT_PEER" get "$WORK/plain.torrent" "$WORK/out" "$LEECH_PORT" "$SEED_PORT" "$LEECH_TIMEOUT")
SC_ENC=()
case ${BENCH_ENCRYPTION:-} in
  "") ;;
  require) export LT_ENCRYPTION=require; SC_ENC=(--encryption require) ;;
  *) echo "BENCH_ENCRYPTION must be empty or require" >&2; exit 2 ;;
esac
SC_GET=("$SC" get "$WORK/plain.torrent" -o "$WORK/out" --peer "127.0.0.1:$SEED_PORT" --bind 127.0.0.1 "${SC_ENC[@]}"
  --port "$LEECH_PORT")

# with_lt_seed CASE RUN LEECHER...: a libtorrent seed, then the timed leecher.
with_lt_seed() {
  local case=$1 run=$2 seed
  shift 2
  spawn "$WORK/seed.log" "$PY" "$LT_PEER" seed "$WORK/plain.torrent" "$WORK/data" "$SEED_PORT"
  seed=$SPAWNED
  wait_for "$seed" "$WORK/seed.log" '^ready' 180
  leech "$case" "$run" "$@"
  stop "$seed"
}

# with_swarmcast_seed CASE RUN LEECHER...: a swarmcast seed, then the timed leecher.
with_swarmcast_seed() {
  local case=$1 run=$2 seed
  shift 2
  spawn "$WORK/seed.log" "$SC" seed "$WORK/plain.torrent" --data "$DATA" \
    --port "$SEED_PORT" --bind 127.0.0.1 "${SC_ENC[@]}"
  seed=$SPAWNED
  wait_for "$seed" "$WORK/seed.log" '^seeding .* on port' 180
  leech "$case" "$run" "$@"
  stop "$seed"
}

: >"$WORK/results"
echo "page cache dropped before each leecher: $CACHE_DROPPED"
ALL_CASES="lt-aria2 lt-lt lt-swarmcast swarmcast-lt swarmcast-swarmcast"
# aria2c is found through the tracker with its own settings: not part of an encrypted run.
if [ -n "${BENCH_ENCRYPTION:-}" ]; then ALL_CASES=${ALL_CASES#lt-aria2 }; fi
SELECTED=" ${BENCH_CASES:-$ALL_CASES} "
for c in $SELECTED; do
  case $c in
    lt-aria2 | lt-lt | lt-swarmcast | swarmcast-lt | swarmcast-swarmcast) ;;
    *) echo "unknown case in BENCH_CASES: $c" >&2; exit 2 ;;
  esac
done
selected() { [[ $SELECTED == *" $1 "* ]]; }
for ((run = 1; run <= RUNS; run++)); do
  echo "run $run of $RUNS"
  disk_floor "$run"
  if selected lt-aria2; then run_lt_aria2 "$run"; fi
  if selected lt-lt; then with_lt_seed lt-lt "$run" "${LT_GET[@]}"; fi
  if selected lt-swarmcast; then with_lt_seed lt-swarmcast "$run" "${SC_GET[@]}"; fi
  if selected swarmcast-lt; then with_swarmcast_seed swarmcast-lt "$run" "${LT_GET[@]}"; fi
  if selected swarmcast-swarmcast; then
    with_swarmcast_seed swarmcast-swarmcast "$run" "${SC_GET[@]}"
  fi
done

# --- report ---------------------------------------------------------------------------------------
CASES=("lt-aria2:libtorrent → aria2c (reference)"
  "lt-aria2-transfer:libtorrent → aria2c, transfer only (no start-up, no tracker)"
  "lt-lt:libtorrent → libtorrent" "lt-swarmcast:libtorrent → swarmcast"
  "swarmcast-lt:swarmcast → libtorrent" "swarmcast-swarmcast:swarmcast → swarmcast"
  "disk-read:the disk alone: read the file, page cache dropped (\`cat\`)"
  "disk-write:the disk alone: write the file and fsync (\`dd conv=fsync\`)")
# Per case: median seconds over the successful runs, highest peak RSS, failures.
summary() {
  awk -v c="$1" -v size="$SIZE_MIB" '
    $1 == c && $4 == "ok" { t[n++] = $2 }
    $1 == c { if ($3 > rss) rss = $3; if ($4 != "ok") fail++; all = all (all ? " " : "") $2 }
    END {
      for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (t[j] < t[i]) { x = t[i]; t[i] = t[j]; t[j] = x }
      med = n == 0 ? 0 : (n % 2 ? t[(n - 1) / 2] : (t[n / 2 - 1] + t[n / 2]) / 2)
      printf "%s %d %d %s\n", med, rss, fail + 0, all
    }' "$WORK/results"
}
read -r REF_SECS _ _ _ < <(summary lt-lt)
failed=0
{
  echo "| case | seconds | MiB/s | speed vs libtorrent → libtorrent | leecher peak RSS (MiB) | runs (s) |"
  echo "|---|---:|---:|---:|---:|---|"
  for entry in "${CASES[@]}"; do
    key=${entry%%:*}
    label=${entry#*:}
    case $key in
      disk-*) ;;
      *) selected "${key%-transfer}" || continue ;;
    esac
    read -r secs rss fails all < <(summary "$key")
    if [ "$fails" -gt 0 ]; then failed=1; fi
    awk -v l="$label" -v s="$secs" -v r="$rss" -v ref="$REF_SECS" -v size="$SIZE_MIB" \
      -v f="$fails" -v all="$all" 'BEGIN {
        rate = s > 0 ? size / s : 0
        note = f > 0 ? " (" f " failed)" : ""
        mem = r > 0 ? sprintf("%.1f", r / 1024) : "—"
        speed = (s > 0 && ref > 0) ? sprintf("%.2f", ref / s) : "—"
        printf "| %s | %.2f | %.1f | %s | %s | %s%s |\n", l, s, rate, speed, mem, all, note
      }'
  done
} >"$WORK/table.md"
ENC_NOTE=""
if [ -n "${BENCH_ENCRYPTION:-}" ]; then ENC_NOTE=" Every peer requires protocol encryption with an RC4 payload."; fi
HEADER="One seed → one leecher on 127.0.0.1, $SIZE_MIB MiB random file, 1 MiB pieces, $RUNS run(s),\
 median wall seconds from leecher start to exit; page cache dropped before each leecher: $CACHE_DROPPED;\
 $(nproc) CPUs; swarmcast $(git rev-parse --short HEAD 2>/dev/null || echo '?'), aria2 $(aria2c --version | awk 'NR==1{print $3}'),\
 libtorrent $($PY -c 'import libtorrent; print(libtorrent.__version__)').$ENC_NOTE"
echo
echo "$HEADER"
echo
cat "$WORK/table.md"
if [ -n "${BENCH_OUT:-}" ]; then
  { echo "$HEADER"; echo; cat "$WORK/table.md"; } >"$BENCH_OUT"
  echo "written to $BENCH_OUT"
fi
exit "$failed"
