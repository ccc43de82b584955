#!/usr/bin/env python3
"""The ABR goal of issue 10 over many seeds, for one or more builds side by side.

Usage: scripts/abr-seeds.py [--seeds 1-20] [--families LIST] LABEL=BINARY [LABEL=BINARY ...]

Runs `BINARY stream eval --seed S --json FILE` for every seed and every build (all families
unless --families), and prints one row per seed and build: hybrid, throughput and BOLA QoE
(means per session over all traces), the hybrid's gain over throughput, hybrid and BOLA stall
seconds per session, the worst family margin (hybrid against the best other rule there), and
whether the three parts of the goal hold. A summary per build follows: seeds meeting each part,
and stall seconds summed over seeds (all families, and the `step` family alone).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile


def seeds_of(spec):
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def measure(binary, seed, families, tmp):
    path = os.path.join(tmp, f"eval-{seed}.json")
    cmd = [binary, "stream", "eval", "--seed", str(seed), "--json", path]
    if families:
        cmd += ["--families", families]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(path) as f:
        report = json.load(f)
    os.remove(path)
    overall = {s["rule"]: s for s in report["summaries"] if s["family"] is None}
    step = {s["rule"]: s for s in report["summaries"] if s["family"] == "step"}
    goal = report["goal"]
    worst = min(goal["families"], key=lambda g: g["gap"])
    total_stall = {
        rule: sum(x["stall_s"] for x in report["sessions"] if x["rule"] == rule)
        for rule in ("hybrid", "bola")
    }
    return {
        "hyb": overall["hybrid"]["mean_qoe"],
        "thr": overall["throughput"]["mean_qoe"],
        "bola": overall["bola"]["mean_qoe"],
        "gain": goal["qoe_gain_vs_throughput"],
        "hyb_stall": goal["stall_s"],
        "bola_stall": goal["bola_stall_s"],
        "worst": worst["gap"],
        "worst_at": f'{worst["family"]}/{worst["best_other"]}',
        "met": goal["met"],
        "total_stall": total_stall,
        "step_stall": {
            r: step[r]["stall_s"] * step[r]["sessions"] for r in ("hybrid", "bola") if r in step
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-20")
    ap.add_argument("--families", default="")
    ap.add_argument("builds", nargs="+", metavar="LABEL=BINARY")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    seeds = seeds_of(args.seeds)
    rows = {label: [] for label, _ in builds}
    header = (
        f'{"build":<10} {"seed":>4} {"hybrid":>7} {"thr":>7} {"bola":>7} {"gain":>7} '
        f'{"stall hyb":>9} {"stall bola":>10} {"worst family":>26} {"goal":>5}'
    )
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for label, binary in builds:
                r = measure(binary, seed, args.families, tmp)
                rows[label].append(r)
                stall_ok = "" if r["hyb_stall"] <= r["bola_stall"] else " >"
                print(
                    f'{label:<10} {seed:>4} {r["hyb"]:>7.2f} {r["thr"]:>7.2f} {r["bola"]:>7.2f} '
                    f'{100 * r["gain"]:>+6.1f}% {r["hyb_stall"]:>9.4f} {r["bola_stall"]:>10.4f} '
                    f'{100 * r["worst"]:>+6.1f}% {r["worst_at"]:>18} '
                    f'{"met" if r["met"] else "NOT":>5}{stall_ok}',
                    flush=True,
                )
    print()
    print(
        f'{"build":<10} {"hybrid QoE":>10} {"gain range":>15} {"stall<=bola":>11} '
        f'{"worst fam":>9} {"goal met":>8} {"stall s hyb/bola":>17} {"step hyb/bola":>14}'
    )
    for label, rs in rows.items():
        n = len(rs)
        mean_hyb = sum(r["hyb"] for r in rs) / n
        gains = [100 * r["gain"] for r in rs]
        stall_ok = sum(r["hyb_stall"] <= r["bola_stall"] for r in rs)
        worst = min(100 * r["worst"] for r in rs)
        met = sum(r["met"] for r in rs)
        th = sum(r["total_stall"]["hybrid"] for r in rs)
        tb = sum(r["total_stall"]["bola"] for r in rs)
        sh = sum(r["step_stall"].get("hybrid", 0.0) for r in rs)
        sb = sum(r["step_stall"].get("bola", 0.0) for r in rs)
        print(
            f"{label:<10} {mean_hyb:>10.2f} {min(gains):>+6.1f}..{max(gains):>+5.1f}% "
            f"{stall_ok:>7} / {n:<2} {worst:>+8.1f}% {met:>5} / {n:<2} "
            f"{th:>8.1f} / {tb:<7.1f} {sh:>6.1f} / {sb:<6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
