#!/usr/bin/python3
"""Small helpers for scripts/bench-transfer.sh (run with /usr/bin/python3: Debian's
python3-libtorrent). Modes:

  bench_helper.py free-ports N                  print N distinct free TCP+UDP ports on 127.0.0.1
  bench_helper.py strip-announce IN OUT         copy a .torrent without its tracker URLs
  bench_helper.py wait-peer PORT TORRENT SECS   UDP-scrape the tracker on 127.0.0.1:PORT until it
                                                lists a peer of TORRENT (exit 1 on timeout)
"""
import random
import socket
import struct
import sys
import time

import libtorrent as lt


def free_ports(n):
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        socks += [s, u]
        ports.append(port)
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))


def strip_announce(src, dst):
    with open(src, "rb") as f:
        d = lt.bdecode(f.read())
    d.pop(b"announce", None)
    d.pop(b"announce-list", None)
    with open(dst, "wb") as f:
        f.write(lt.bencode(d))


def scrape_peers(port, info_hash):
    """One BEP 15 connect + scrape round trip; returns how many peers the tracker lists."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    try:
        tid = random.getrandbits(32)
        s.sendto(struct.pack(">QII", 0x41727101980, 0, tid), ("127.0.0.1", port))
        data, _ = s.recvfrom(2048)
        action, rtid, conn = struct.unpack(">IIQ", data[:16])
        if action != 0 or rtid != tid:
            return 0
        tid = random.getrandbits(32)
        s.sendto(struct.pack(">QII", conn, 2, tid) + info_hash, ("127.0.0.1", port))
        data, _ = s.recvfrom(2048)
        action, rtid = struct.unpack(">II", data[:8])
        if action != 2 or rtid != tid or len(data) < 20:
            return 0
        seeders, _completed, leechers = struct.unpack(">III", data[8:20])
        return seeders + leechers
    except (OSError, struct.error):
        return 0
    finally:
        s.close()


def wait_peer(port, torrent, secs):
    info_hash = bytes.fromhex(str(lt.torrent_info(torrent).info_hash()))
    deadline = time.time() + secs
    while time.time() < deadline:
        if scrape_peers(port, info_hash) >= 1:
            return
        time.sleep(0.2)
    sys.exit(f"error: no peer registered at the tracker on port {port} within {secs} s")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "free-ports":
        free_ports(int(sys.argv[2]))
    elif mode == "strip-announce":
        strip_announce(sys.argv[2], sys.argv[3])
    elif mode == "wait-peer":
        wait_peer(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
