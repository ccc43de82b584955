#!/usr/bin/env bash
# uTP throughput on loopback, ours beside libtorrent's in one run, one table.
#
# Usage: scripts/bench-utp.sh [MIB=256]
#
# - Swarmcast: one UtpStream to another (crates/utp/examples/loopback.rs), MIB of payload, at
#   MSS 1,176 (our default: fits any IPv6 path) and 8,000 (what loopback's MTU allows), from
#   connect to the receiver's end of stream.
# - libtorrent 2.0 → libtorrent 2.0 with peers over uTP only (LT_UTP_ONLY=1 in
#   tests/peers/lt_peer.py): a seed of a MIB file and a getter told its address, from the
#   getter's connect to its last piece (its session start-up not counted).
# - The same BitTorrent transfer with Swarmcast: a libtorrent uTP-only seed → `swarmcast get
#   --transport utp` (TCP neither dialled nor accepted), and `swarmcast seed` → `swarmcast get`
#   with `--transport utp`, then over TCP for reference; seconds as `get` reports them (from its start to the last
#   piece verified), bytes compared after each. Peak RSS of each getter (GNU time).
#
# Needs python3-libtorrent (scripts/install-deps.sh); builds the example in release. Every
# process this script starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-256}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swarmcast-target}"
/usr/bin/python3 -c 'import libtorrent' 2>/dev/null || scripts/install-deps.sh
cargo build --release -q -p utp --example loopback
cargo build --release -q -p swarmcast
source scripts/bench-lib.sh bench-utp

echo "uTP on loopback, $MIB MiB, $(date -u +%F)" >&2
rows=()
for mss in 1176 8000; do
  line=$("$CARGO_TARGET_DIR/release/examples/loopback" "$MIB" "$mss")
  secs=$(sed -E 's/.* in ([0-9.]+) s.*/\1/' <<<"$line")
  rows+=("| Swarmcast UtpStream → UtpStream, MSS $mss | $secs | $(python3 -c "print(f'{$MIB/$secs:.1f}')") | — |")
done

mkdir -p "$tmp/seed" "$tmp/got"
head -c "$((MIB << 20))" /dev/urandom >"$tmp/seed/payload.bin"
"$CARGO_TARGET_DIR/release/swarmcast" create "$tmp/seed/payload.bin" -o "$tmp/p.torrent" >/dev/null
sp=$(free_port); gp=$(free_port)
LT_UTP_ONLY=1 /usr/bin/python3 tests/peers/lt_peer.py seed "$tmp/p.torrent" "$tmp/seed" "$sp" >"$tmp/seed.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do grep -q ready "$tmp/seed.log" && break; sleep 0.1; done
grep -q ready "$tmp/seed.log" || { echo "the libtorrent seed did not start" >&2; exit 1; }
out=$(LT_UTP_ONLY=1 timeout 600 /usr/bin/time -f "maxrss %M" -o "$tmp/lt.rss" /usr/bin/python3 tests/peers/lt_peer.py get "$tmp/p.torrent" "$tmp/got" "$gp" "$sp" 600)
rss=$(( $(sed -nE 's/^maxrss ([0-9]+)$/\1/p' "$tmp/lt.rss") / 1024 ))
secs=$(sed -nE 's/^seconds ([0-9.]+)$/\1/p' <<<"$out")
[ -n "$secs" ] || { echo "the libtorrent getter failed: $out" >&2; exit 1; }
cmp -s "$tmp/seed/payload.bin" "$tmp/got/payload.bin" || { echo "libtorrent's copy differs" >&2; exit 1; }
rows+=("| libtorrent → libtorrent, uTP only | $secs | $(python3 -c "print(f'{$MIB/$secs:.1f}')") | $rss MB |")

# `swarmcast get --transport $2` from the peer at $1; prints its seconds and peak RSS (MB).
our_get() {
  rm -rf "$tmp/ours"
  local said
  said=$(timeout 600 /usr/bin/time -f "maxrss %M" "$CARGO_TARGET_DIR/release/swarmcast" get "$tmp/p.torrent" -o "$tmp/ours" \
    --bind 127.0.0.1 --port "$(free_port)" --no-dht --transport "$2" --peer "127.0.0.1:$1" 2>&1)
  cmp -s "$tmp/seed/payload.bin" "$tmp/ours/payload.bin" || { echo "our copy differs: $said" >&2; exit 1; }
  local secs
  secs=$(sed -nE 's/.*complete, every piece verified \([0-9.]+ MiB in ([0-9.]+) s.*/\1/p' <<<"$said")
  [ -n "$secs" ] || { echo "our get did not report its time: $said" >&2; exit 1; }
  echo "$secs" \
    "$(( $(sed -nE 's/^maxrss ([0-9]+)$/\1/p' <<<"$said") / 1024 ))"
}
read -r secs rss < <(our_get "$sp" utp); [ -n "$secs" ] || exit 1
rows+=("| libtorrent → Swarmcast \`get\`, uTP only | $secs | $(python3 -c "print(f'{$MIB/$secs:.1f}')") | $rss MB |")
kill "${pids[@]}" 2>/dev/null || true
op=$(free_port)
"$CARGO_TARGET_DIR/release/swarmcast" seed "$tmp/p.torrent" --data "$tmp/seed/payload.bin" \
  --bind 127.0.0.1 --port "$op" --no-dht >"$tmp/ours-seed.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do grep -q "seeding" "$tmp/ours-seed.log" && break; sleep 0.1; done
for t in utp tcp; do
  read -r secs rss < <(our_get "$op" "$t"); [ -n "$secs" ] || exit 1
  rows+=("| Swarmcast \`seed\` → Swarmcast \`get --transport $t\` | $secs | $(python3 -c "print(f'{$MIB/$secs:.1f}')") | $rss MB |")
done

echo "| what | seconds | MiB/s | getter's peak RSS |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
