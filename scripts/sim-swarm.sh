#!/usr/bin/env bash
# The notes' claims about BitTorrent, measured under `swarmcast sim swarm` (every peer the
# engine's TorrentCore, in virtual time): ratio to the bound over N, tit-for-tat against free
# riders, churn, rarest first against random, and the seed's unchoke slots. Prints one table per
# question. Usage: bash scripts/sim-swarm.sh [OUT_DIR]  (SIM_SWARM_BIG=1 adds N = 10,000).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swarmcast-target}"
cargo build --release -q -p swarmcast
bin="$CARGO_TARGET_DIR/release/swarmcast"
common=(--file-size 64M --server-upload 20M --peer-upload 2M)

run() { # name, args...
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$out/$name.time" "$bin" sim swarm "$@" --json "$out/$name.json" >/dev/null 2>"$out/$name.log"
}
field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$1" "$2"; }

echo "## Ratio to the bound over N (F = 64 MiB, u = 2 MiB/s, u_s = 10u, 20-80 ms links)"
echo "| N | measured (s) | bound (s) | ratio | start-up / middle / tail gap (s) | wall (s) | peak RSS (MiB) |"
echo "|---:|---:|---:|---:|---|---:|---:|"
ns=(10 20 50 100 200 500 1000)
if [ "${SIM_SWARM_BIG:-0}" = 1 ]; then ns+=(10000); fi
for n in "${ns[@]}"; do
  run "n$n" --peers "$n" "${common[@]}" --seed 1
  read -r wall rss < "$out/n$n.time"
  printf "| %s | %.2f | %.2f | %.3f | %.2f / %.2f / %.2f | %.1f | %d |\n" "$n" \
    "$(field "$out/n$n.json" "r['measured_s']")" "$(field "$out/n$n.json" "r['bound_s']")" \
    "$(field "$out/n$n.json" "r['ratio']")" "$(field "$out/n$n.json" "r['gap']['startup_s']")" \
    "$(field "$out/n$n.json" "r['gap']['middle_s']")" "$(field "$out/n$n.json" "r['gap']['tail_s']")" \
    "$wall" "$((rss / 1024))"
done

files=(); for n in "${ns[@]}"; do files+=("$out/n$n.json"); done
"$bin" bound --file-size 64M --server-upload 20M --peer-upload 2M --peers "${ns[-1]}" --log \
  --plot "$out/sim-swarm.svg" --measured "${files[@]}" >/dev/null
echo "(the lecture's figure with these points, log-log: $out/sim-swarm.svg)"

echo
echo "## Tit-for-tat: 20% free riders (upload 0), N = 200"
echo "| seed | contributors: mean / last (s) | free riders: mean / last (s) | free riders later by |"
echo "|---:|---|---|---:|"
for s in 1 2 3; do
  run "fr$s" --peers 200 "${common[@]}" --free-riders 0.2 --seed "$s"
  f="$out/fr$s.json"
  printf "| %s | %.1f / %.1f | %.1f / %.1f | %.0f%% |\n" "$s" \
    "$(field "$f" "r['contributors']['mean_s']")" "$(field "$f" "r['contributors']['max_s']")" \
    "$(field "$f" "r['free_riders']['mean_s']")" "$(field "$f" "r['free_riders']['max_s']")" \
    "$(field "$f" "100*(r['free_riders']['mean_s']/r['contributors']['mean_s']-1)")"
done

echo
echo "## Churn: peers leave at completion (selfish) or stay (altruistic), N = 200, Poisson arrivals 5/s"
echo "| leave after complete | seed | mean completion (s) | last completion (s) | ratio |"
echo "|---:|---:|---:|---:|---:|"
for frac in 0 0.5 1; do
  for s in 1 2; do
    run "ch$frac-$s" --peers 200 "${common[@]}" --arrivals poisson:5 --leave-after-complete "$frac" --seed "$s"
    f="$out/ch$frac-$s.json"
    printf "| %s | %s | %.1f | %.1f | %.3f |\n" "$frac" "$s" \
      "$(field "$f" "sum(p['completed_s'] for p in r['peers'])/len(r['peers'])")" \
      "$(field "$f" "r['measured_s']")" "$(field "$f" "r['ratio']")"
  done
done

echo
echo "## Rarest first against random piece choice, N = 200"
echo "| piece choice | seed | measured (s) | ratio | tail gap (s) |"
echo "|---|---:|---:|---:|---:|"
for mode in rarest random; do
  flag=(); [ "$mode" = random ] && flag=(--random-pieces)
  for s in 1 2 3; do
    run "pc$mode-$s" --peers 200 "${common[@]}" "${flag[@]}" --seed "$s"
    f="$out/pc$mode-$s.json"
    printf "| %s | %s | %.2f | %.3f | %.2f |\n" "$mode" "$s" "$(field "$f" "r['measured_s']")" \
      "$(field "$f" "r['ratio']")" "$(field "$f" "r['gap']['tail_s']")"
  done
done

echo
echo "## The seed's unchoke slots (N = 50, 256 pieces of 256 KiB, payload caps, 0-1 ms links)"
echo "| seed slots | ratios (seeds 1, 2, 3) | start-up gap (s) |"
echo "|---:|---|---|"
for k in 4 10 20; do
  rs=(); gs=()
  for s in 1 2 3; do
    run "sl$k-$s" --peers 50 "${common[@]}" --piece-size 256k --payload-caps --latency 0..1 --seed-slots "$k" --seed "$s"
    rs+=("$(field "$out/sl$k-$s.json" "'%.3f' % r['ratio']")")
    gs+=("$(field "$out/sl$k-$s.json" "'%.2f' % r['gap']['startup_s']")")
  done
  echo "| $k | ${rs[*]} | ${gs[*]} |"
done
echo
echo "(JSON and logs in $out)"
