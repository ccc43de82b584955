#!/usr/bin/env python3
"""The DHT on real processes: a loopback network of our `swarmcast dht node`s and libtorrent DHT
nodes (tests/peers/lt_dht.py), ten info-hashes announced into it, then the same `get_peers`
lookups made by a fresh Swarmcast node and by a fresh libtorrent node, one process per lookup,
each timed from after its own join (the process's start-up is not counted). Every command that
ran left the network again, so later lookups meet departed nodes in the tables, as in a real
DHT. Prints one table.

  python3 scripts/dht-loopback.py [--ours 50] [--libtorrent 5] [--lookups 30] [--bin PATH] [--ipv6]

Needs python3-libtorrent (scripts/install-deps.sh) and a release build
(`cargo build --release -p swarmcast`). Everything listens on 127.0.0.1 (with --ipv6: on ::1,
BEP 32's DHT over IPv6, libtorrent too); every process is started here, bounded in time, and
killed by PID at the end.
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT_DHT = os.path.join(ROOT, "tests", "peers", "lt_dht.py")


HOST = "127.0.0.1"


def at(port):
    """HOST:PORT, the IPv6 address in brackets."""
    return f"[{HOST}]:{port}" if ":" in HOST else f"{HOST}:{port}"


def free_port(taken):
    """A free UDP port in 20000-32000 (below the kernel's ephemeral range)."""
    while True:
        port = random.randint(20000, 32000)
        if port in taken:
            continue
        s = socket.socket(socket.AF_INET6 if ":" in HOST else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((HOST, port))
        except OSError:
            continue
        finally:
            s.close()
        taken.add(port)
        return port


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", type=int, default=50, help="our DHT nodes (the first is the router)")
    ap.add_argument("--libtorrent", type=int, default=5, help="libtorrent DHT nodes")
    ap.add_argument("--lookups", type=int, default=30, help="lookups by each implementation")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "swarmcast"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ipv6", action="store_true", help="every node on ::1 (BEP 32)")
    args = ap.parse_args()
    global HOST
    HOST = "::1" if args.ipv6 else "127.0.0.1"
    random.seed(args.seed)
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin} is missing: run cargo build --release -p swarmcast")
    if subprocess.run(["/usr/bin/python3", "-c", "import libtorrent"]).returncode != 0:
        sys.exit("python3-libtorrent is missing: run scripts/install-deps.sh")
    env = dict(os.environ, SWARMCAST_LOG="warn")
    lt_env = dict(os.environ, LT_IPV6="1" if args.ipv6 else "0")
    taken = set()
    procs = []
    try:
        ports = [free_port(taken) for _ in range(args.ours)]
        router = at(ports[0])
        for i, port in enumerate(ports):
            cmd = [args.bin, "dht", "node", "--listen", at(port)]
            if i > 0:
                cmd += ["--bootstrap", router]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            if i == 0:
                time.sleep(0.5)
        for _ in range(args.libtorrent):
            cmd = ["/usr/bin/python3", LT_DHT, "node", str(ports[0]), str(free_port(taken))]
            procs.append(subprocess.Popen(cmd, env=lt_env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        print(f"{args.ours} Swarmcast nodes and {args.libtorrent} libtorrent nodes on loopback; "
              "letting them meet for 10 s", file=sys.stderr)
        time.sleep(10)
        hashes = ["%040x" % random.getrandbits(160) for _ in range(10)]
        for i, ih in enumerate(hashes):
            via = at(random.choice(ports))
            out = subprocess.run([args.bin, "dht", "announce", ih, "--port", str(7000 + i),
                                  "--listen", at(0), "--bootstrap", via],
                                 env=env, capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                sys.exit(f"announce failed: {out.stderr}")
        ours = {"first": [], "end": [], "queries": [], "found": 0}
        theirs = {"first": [], "queries": [], "found": 0}
        for j in range(args.lookups):
            ih = hashes[j % len(hashes)]
            via_port = random.choice(ports)
            print(f"lookup {j + 1}/{args.lookups}", file=sys.stderr)
            out = subprocess.run([args.bin, "dht", "get-peers", ih, "--json", "--listen",
                                  at(0), "--bootstrap", at(via_port)],
                                 env=env, capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                r = json.loads(out.stdout)
                ours["end"].append(r["elapsed_ms"])
                ours["queries"].append(r["queries"])
                if r["peers"]:
                    ours["found"] += 1
                    ours["first"].append(r["first_value_ms"])
            out = subprocess.run(["/usr/bin/python3", LT_DHT, "time-get-peers", str(via_port),
                                  str(free_port(taken)), ih, "20"],
                                 env=lt_env, capture_output=True, text=True, timeout=60)
            line = next((l for l in out.stdout.splitlines() if l.startswith("lookup ")), None)
            if out.returncode == 0 and line:
                w = line.split()
                theirs["first"].append(float(w[1]))
                theirs["queries"].append(int(w[3]))
                theirs["found"] += 1
        n = args.lookups
        print(f"\nDHT on loopback ({HOST}): {args.ours} Swarmcast + {args.libtorrent} libtorrent nodes, "
              f"{n} get_peers lookups each of 10 announced info-hashes, a fresh node per lookup")
        print(f"{'':34}{'median':>10}{'p90':>10}")
        rows = [
            ("Swarmcast: to first peers, ms", ours["first"]),
            ("Swarmcast: to the end, ms", ours["end"]),
            ("Swarmcast: queries per lookup", ours["queries"]),
            ("libtorrent: to first peers, ms", theirs["first"]),
            ("libtorrent: queries to first peers", theirs["queries"]),
        ]
        for name, xs in rows:
            print(f"{name:34}{statistics.median(xs) if xs else float('nan'):>10.1f}"
                  f"{pct(xs, 90):>10.1f}")
        print(f"found peers: Swarmcast {ours['found']}/{n}, libtorrent {theirs['found']}/{n}")
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
