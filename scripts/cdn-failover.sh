#!/usr/bin/env bash
# The CDN failover evaluation of issue 5 outside the test harness (the README quotes its table):
# packages a test clip, starts an origin, 3 edges (127.0.0.2-4) and the router, plays it with
# 10 `swarmcast play` processes through the router, kills (SIGKILL) the edge that got the most
# players once each of them has played a few segments, and prints one row per player.
#
# Usage: scripts/cdn-failover.sh [CLIP_SECONDS] [SPEED] [TRACE_BPS]    (default 60 2 1000000)
# Needs ffmpeg and a built binary: cargo build --release -p swarmcast (SWARMCAST=path overrides;
# without a release build the debug one is used). Takes about CLIP_SECONDS/SPEED + 15 s.
# The players throttle themselves to a constant TRACE_BPS trace: on loopback they would
# otherwise have the whole clip buffered within a second and the kill would hit nobody.
# SIGNAL=STOP freezes the edge instead of killing it (a black hole: connections hang until
# the player's timeouts fire). KEEP=1 keeps the work directory (player logs and JSON reports).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
SC="${SWARMCAST:-$TARGET/release/swarmcast}"
[[ -x "$SC" ]] || SC="$TARGET/debug/swarmcast"
[[ -x "$SC" ]] || { echo "no swarmcast binary: run cargo build --release -p swarmcast" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "ffmpeg is missing (Debian package ffmpeg)" >&2; exit 1; }
CLIP="${1:-60}" SPEED="${2:-2}" TRACE_BPS="${3:-1000000}"
SIGNAL="${SIGNAL:-KILL}" PLAYERS=10 BEFORE_KILL=3
SEGMENTS=$((CLIP / 2))

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null
    if [[ -n "${KEEP:-}" ]]; then echo "logs and reports kept in $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up() { # URL: wait until it answers 200
    for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "$1 does not answer" >&2; exit 1
}

echo "packaging a ${CLIP}s clip (180p:200k, 360p:600k, 2 s segments)" >&2
"$SC" stream package --test-source "${CLIP}s" --out "$WORK/content/movie1" \
    --ladder 180p:200k,360p:600k --segment 2s >"$WORK/package.log" 2>&1

OP=$(port)
"$SC" stream origin --dir "$WORK/content" --listen "127.0.0.1:$OP" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
up "http://127.0.0.1:$OP/movie1/manifest.mpd"

EDGE_URL=() EDGE_PID=() ROUTER_ARGS=()
for i in 0 1 2; do
    addr="127.0.0.$((i + 2)):$(port)"
    "$SC" stream edge --origin "http://127.0.0.1:$OP" --listen "$addr" --cache-size 64M \
        --name "e$i" >"$WORK/e$i.log" 2>&1 &
    PIDS+=($!) EDGE_PID+=($!) EDGE_URL+=("http://$addr")
    ROUTER_ARGS+=(--edge "e$i=http://$addr")
    up "http://$addr/health"
done
RP=$(port)
"$SC" stream router --listen "127.0.0.1:$RP" --probe-interval 1s "${ROUTER_ARGS[@]}" \
    >"$WORK/router.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    [[ "$(curl -sf "http://127.0.0.1:$RP/status" | grep -o '"healthy":true' | wc -l)" == 3 ]] && break
    sleep 0.1
done

echo "1 $TRACE_BPS" >"$WORK/trace.txt"
PLAYER_PID=()
for i in $(seq 0 $((PLAYERS - 1))); do
    "$SC" play "http://127.0.0.1:$RP/play/movie1/manifest.mpd" --speed "$SPEED" \
        --trace "$WORK/trace.txt" --json "$WORK/p$i.json" >"$WORK/p$i.out" 2>"$WORK/p$i.err" &
    PLAYER_PID+=($!)
done

# Each player's edge is the first replica of its manifest line.
first() { grep -m1 'replicas: ' "$WORK/p$1.err" | sed 's/.*replicas: //; s/,.*//'; }
for i in $(seq 0 $((PLAYERS - 1))); do
    for _ in $(seq 1 300); do [[ -n "$(first "$i" 2>/dev/null)" ]] && break; sleep 0.1; done
done
best=0 bestn=-1
for e in 0 1 2; do
    n=0
    for i in $(seq 0 $((PLAYERS - 1))); do [[ "$(first "$i")" == "${EDGE_URL[$e]}/movie1/" ]] && n=$((n + 1)); done
    echo "e$e (${EDGE_URL[$e]}): $n players" >&2
    if ((n > bestn)); then best=$e bestn=$n; fi
done
VICTIM="${EDGE_URL[$best]}/movie1/"
for i in $(seq 0 $((PLAYERS - 1))); do
    [[ "$(first "$i")" == "$VICTIM" ]] || continue
    for _ in $(seq 1 600); do
        (($(grep -c '^segment [0-9]*/' "$WORK/p$i.err" || true) >= BEFORE_KILL)) && break
        sleep 0.1
    done
done
{ kill -s "$SIGNAL" "${EDGE_PID[$best]}"; sleep 0.2; } 2>/dev/null
echo "sent SIG$SIGNAL to e$best (${EDGE_URL[$best]}) after its players played $BEFORE_KILL segments" >&2

fail=0
for i in $(seq 0 $((PLAYERS - 1))); do wait "${PLAYER_PID[$i]}" || { echo "p$i failed:" >&2; tail -5 "$WORK/p$i.err" >&2; fail=1; }; done

python3 - "$WORK" "$PLAYERS" "$VICTIM" "$SEGMENTS" "$SPEED" "$TRACE_BPS" <<'EOF'
import json, sys
work, n, victim, segments, speed, trace = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
print(f"{segments} segments of 2 s, 10 players at --speed {speed}, trace {int(trace)//1000} kbit/s; edge {victim} killed (or frozen)")
print("| player | edge | segments | failovers | first segment from another edge | stalls | stall_s | startup_s | qoe |")
print("|---|---|---|---|---|---|---|---|---|")
ok = True
for i in range(n):
    try:
        r = json.load(open(f"{work}/p{i}.json"))
    except OSError:
        print(f"| p{i} | - | failed | | | | | | |"); ok = False; continue
    segs = r["segments"]
    edge = segs[0]["base_url"]
    moved = next((s["index"] for s in segs if s["base_url"] != edge), None)
    mark = " (killed)" if edge == victim else ""
    print(f"| p{i} | {edge}{mark} | {len(segs)} | {r['failovers']} | {'-' if moved is None else moved} "
          f"| {r['stalls']} | {r['stall_s']:.2f} | {r['startup_s']:.2f} | {r['qoe']:.2f} |")
    ok &= len(segs) == segments and r["stalls"] <= 1 and r["stall_s"] <= 2.0
    ok &= edge != victim or (r["failovers"] >= 1 and segs[-1]["base_url"] != victim)
print("criterion (every player continues; at most one stall of at most 2 s each):", "met" if ok else "NOT met")
sys.exit(0 if ok else 1)
EOF
exit $fail
