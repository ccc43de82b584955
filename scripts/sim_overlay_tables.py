"""Prints the markdown tables of docs/overlay-sim.md from the JSON runs of scripts/sim-overlay.sh."""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])


def load(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def missed(r):
    b = r.get("broadcast") or {}
    return b.get("missed", "?")


print("### 1,000 nodes, 3 anchors, threshold 8 (defaults)\n")
print("| seed | components | degree mean (max) | hops to 99.9% | RMR | LDH | missed | frames |")
print("|---|---|---|---|---|---|---|---|")
for s in (1, 2, 3):
    r = load(f"n1000-s{s}")
    if r:
        d = r["degree"]
        print(f"| {s} | {r['components']} | {d['mean']:.2f} ({d['max']}) | {r['hops_999']['max']} "
              f"| {r['rmr']:.3f} | {r['ldh']:.2f} | {missed(r)} | {r['frames']} |")

print("\n### Graft timeout (1,000 nodes)\n")
print("| graft_timeout_1 | seed | RMR | LDH |")
print("|---|---|---|---|")
for g in (80, 250, 500):
    for s in (1, 2):
        r = load(f"n1000-graft{g}-s{s}")
        if r:
            print(f"| {g} ms | {s} | {r['rmr']:.3f} | {r['ldh']:.2f} |")

print("\n### 10,000 nodes, crash 80%, by threshold (seed 1)\n")
print("| active_max | degree mean (max) | hops to 99.9% (max / mean) | path mean / max | RMR | LDH "
      "| first broadcast | after healing | isolated |")
print("|---|---|---|---|---|---|---|---|---|")
for k in (4, 5, 6, 8, 11):
    r = load(f"n10000-k{k}-c0.8")
    if r:
        d, h = r["degree"], r["hops_999"]
        print(f"| {k} | {d['mean']:.2f} ({d['max']}) | {h['max']} / {h['mean']:.2f} "
              f"| {r['path_hops_mean']:.2f} / {r['path_hops_max']} | {r['rmr']:.3f} | {r['ldh']:.2f} "
              f"| {r['delivery_first']:.4f} | {r['delivery_after_heal']:.4f} | {r['isolated']} |")

print("\n### Crashes at 10,000 nodes (threshold 8)\n")
print("| crash | seed | first broadcast | after healing | isolated | isolated knowing a live anchor |")
print("|---|---|---|---|---|---|")
for c, s, name in [(0.5, 1, "n10000-k8-c0.5"), (0.7, 1, "n10000-k8-c0.7"), (0.8, 1, "n10000-k8-c0.8"),
                   (0.8, 2, "n10000-k8-c0.8-s2"), (0.9, 1, "n10000-k8-c0.9"), (0.9, 2, "n10000-k8-c0.9-s2")]:
    r = load(name)
    if r:
        print(f"| {c} | {s} | {r['delivery_first']:.4f} | {r['delivery_after_heal']:.4f} | {r['isolated']} "
              f"| {r['isolated_knowing_live_anchor']} |")

r = load("n100000-k8-c0.8")
if r:
    d, h = r["degree"], r["hops_999"]
    print("\n### 100,000 nodes, threshold 8, crash 80% (seed 1)\n")
    print(f"components {r['components']}, degree mean {d['mean']:.2f} (max {d['max']}), hops to 99.9% "
          f"{h['max']} (mean {h['mean']:.2f}), path mean {r['path_hops_mean']:.2f} / max {r['path_hops_max']}, "
          f"RMR {r['rmr']:.3f}, LDH {r['ldh']:.2f}, missed {missed(r)}, first broadcast "
          f"{r['delivery_first']:.4f}, after healing {r['delivery_after_heal']:.4f}, isolated {r['isolated']}")
