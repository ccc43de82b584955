#!/usr/bin/python3
"""A libtorrent DHT node for Swarmcast's DHT interop test (run with /usr/bin/python3: Debian's
python3-libtorrent 2.0). Modes:

  lt_dht.py announce ROUTER_PORT PORT INFOHASH     join the DHT through 127.0.0.1:ROUTER_PORT,
                                                   announce INFOHASH on PORT, print "announced",
                                                   keep announcing every 2 s until killed
  lt_dht.py get-peers ROUTER_PORT PORT INFOHASH TIMEOUT
                                                   join, look up INFOHASH until a peer is found:
                                                   print "peer IP:PORT" lines, exit 0; exit 1 on
                                                   TIMEOUT seconds
  lt_dht.py node ROUTER_PORT PORT                  join, print "joined", stay until killed
  lt_dht.py time-get-peers ROUTER_PORT PORT INFOHASH TIMEOUT
                                                   join, wait for the bootstrap to end, look up
                                                   INFOHASH once: print "lookup MS ms QUERIES
                                                   queries PEERS peers" at its first peers
                                                   (queries: get_peers sent until then)
  lt_dht.py put-immutable ROUTER_PORT PORT TEXT    join, put TEXT (BEP 44), print "target HEX"
                                                   once a node took it, exit 0
  lt_dht.py get-immutable ROUTER_PORT PORT HEX TIMEOUT
                                                   join, get the item HEX, print "value TEXT",
                                                   exit 0; exit 1 on TIMEOUT
  lt_dht.py get-mutable ROUTER_PORT PORT PUBKEY_HEX SALT TIMEOUT
                                                   join, get the newest mutable item, print
                                                   "value TEXT" and "seq N", exit 0
  lt_dht.py put-mutable ROUTER_PORT PORT SEED_HEX PUBKEY_HEX SALT TEXT
                                                   join, put TEXT signed by the key (its 32-byte
                                                   seed; libtorrent takes the expanded key),
                                                   print "put", exit 0
  lt_dht.py seed ROUTER_PORT PORT TORRENT DATA_DIR  join, seed TORRENT from DATA_DIR, announce it
                                                   in the DHT: print "announced", seed until killed
  lt_dht.py get ROUTER_PORT PORT MAGNET OUT_DIR TIMEOUT
                                                   join, download MAGNET with peers from the DHT
                                                   alone; print "done", exit 0; exit 1 on TIMEOUT

Settings are lt_peer.py's (loopback, no LSD/UPnP/NAT-PMP/uTP, several connections per IP) plus
shared/REAL-PEERS.md's DHT recipe: the DHT on, no bootstrap routers of its own, no
one-node-per-IP restriction (every node is 127.0.0.1), rate limits raised. LT_IPV6=1: the
session and the router are on [::1] (BEP 32, the DHT over IPv6).
"""
import os
import sys
import tempfile
import time
import warnings

import libtorrent as lt

import lt_peer  # the shared loopback settings (this script's folder is on sys.path)

# session.status() is deprecated in 2.0 but still the binding's way to count DHT nodes.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def session(port, router_port):
    base = lt_peer.settings(port)
    base.update({
        "enable_dht": True,
        "dht_bootstrap_nodes": "",
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_block_ratelimit": 100000,
        "dht_upload_rate_limit": 1000000,
        "alert_mask": lt.alert.category_t.all_categories,
    })
    ses = lt.session(base)
    ses.add_dht_node(("::1" if os.environ.get("LT_IPV6") == "1" else "127.0.0.1", router_port))
    deadline = time.time() + 20
    while ses.status().dht_nodes < 1:
        if time.time() > deadline:
            print("error: the DHT router never answered", flush=True)
            sys.exit(2)
        ses.pop_alerts()
        time.sleep(0.1)
    return ses


def wait_alert(ses, on_alert, seconds):
    """Feeds every alert to on_alert until it returns True (then True) or SECONDS pass."""
    end = time.time() + seconds
    while time.time() < end:
        for a in ses.pop_alerts():
            if on_alert(a):
                return True
        time.sleep(0.1)
    return False


def ask_until(ses, ask, on_alert, timeout, failure):
    """Calls ask() every 2 s until on_alert accepts an alert: exit 0; after TIMEOUT: exit 1."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ask()
        if wait_alert(ses, on_alert, 2):
            sys.exit(0)
    print(f"error: {failure}", flush=True)
    sys.exit(1)


def item_text(item):
    """The text of a BEP 44 item as the 2.0 binding gives it (a dict with its value, or bytes)."""
    if isinstance(item, dict):
        item = item.get("value", item)
    return item.decode() if isinstance(item, bytes) else str(item)


def printed(*lines):
    for line in lines:
        print(line, flush=True)
    return True


def main():
    mode, router_port, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    info_hash = sys.argv[4] if len(sys.argv) > 4 else ""
    ses = session(port, router_port)
    if mode == "node":
        print("joined", flush=True)
        while True:
            ses.pop_alerts()
            time.sleep(0.5)
    elif mode == "put-immutable":
        target = ses.dht_put_immutable_item(info_hash)
        if wait_alert(ses, lambda a: isinstance(a, lt.dht_put_alert) and a.num_success > 0, 30):
            printed(f"target {target}")
            sys.exit(0)
        printed("error: no node took the item")
        sys.exit(1)
    elif mode == "get-immutable":
        target = lt.sha1_hash(bytes.fromhex(info_hash))
        ask_until(ses, lambda: ses.dht_get_immutable_item(target),
                  lambda a: isinstance(a, lt.dht_immutable_item_alert) and a.item
                  and printed(f"value {item_text(a.item)}"),
                  float(sys.argv[5]), "no item found")
    elif mode == "get-mutable":
        key, salt = bytes.fromhex(info_hash), sys.argv[5]
        ask_until(ses, lambda: ses.dht_get_mutable_item(key, salt),
                  lambda a: isinstance(a, lt.dht_mutable_item_alert) and a.item
                  and printed(f"value {item_text(a.item)}", f"seq {a.seq}"),
                  float(sys.argv[6]), "no item found")
    elif mode == "put-mutable":
        import hashlib
        seed, public, salt, text = bytes.fromhex(sys.argv[4]), bytes.fromhex(sys.argv[5]), sys.argv[6], sys.argv[7]
        # libtorrent (orlp's ed25519) takes the expanded secret key: SHA-512 of the seed, clamped.
        expanded = bytearray(hashlib.sha512(seed).digest())
        expanded[0] &= 248
        expanded[31] &= 63
        expanded[31] |= 64
        ses.dht_put_mutable_item(bytes(expanded), public, text, salt)
        if wait_alert(ses, lambda a: isinstance(a, lt.dht_put_alert) and a.num_success > 0, 30):
            printed("put")
            sys.exit(0)
        printed("error: no node took the item")
        sys.exit(1)
    elif mode == "announce":
        params = lt.parse_magnet_uri(f"magnet:?xt=urn:btih:{info_hash}")
        params.save_path = tempfile.mkdtemp()
        handle = ses.add_torrent(params)
        said = False
        while True:
            handle.force_dht_announce()
            for a in ses.pop_alerts():
                if isinstance(a, lt.dht_reply_alert) and not said:
                    print("announced", flush=True)
                    said = True
            time.sleep(2)
    elif mode == "get-peers":
        target = lt.sha1_hash(bytes.fromhex(info_hash))
        ask_until(ses, lambda: ses.dht_get_peers(target),
                  lambda a: isinstance(a, lt.dht_get_peers_reply_alert) and a.peers()
                  and printed(*(f"peer {ip}:{p}" for ip, p in a.peers())),
                  float(sys.argv[5]), "no peer found")
    elif mode == "time-get-peers":
        # The bootstrap's end (its alert may have gone by while session() waited for a node).
        wait_alert(ses, lambda a: isinstance(a, lt.dht_bootstrap_alert), 3)
        target = lt.sha1_hash(bytes.fromhex(info_hash))
        queries = 0
        start = time.perf_counter()
        ses.dht_get_peers(target)
        end = start + float(sys.argv[5])
        while time.perf_counter() < end:
            ses.wait_for_alert(50)
            for a in ses.pop_alerts():
                if isinstance(a, lt.dht_outgoing_get_peers_alert) and a.info_hash == target:
                    queries += 1
                elif isinstance(a, lt.dht_get_peers_reply_alert) and a.info_hash == target:
                    ms = (time.perf_counter() - start) * 1e3
                    print(f"lookup {ms:.1f} ms {queries} queries {len(a.peers())} peers", flush=True)
                    sys.exit(0)
        print("error: no peers found", flush=True)
        sys.exit(1)
    elif mode == "seed":
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(sys.argv[4])
        params.save_path = sys.argv[5]
        handle = ses.add_torrent(params)
        said = False
        while True:
            if handle.status().is_seeding:
                handle.force_dht_announce()
                for a in ses.pop_alerts():
                    if isinstance(a, lt.dht_reply_alert) and not said:
                        print("announced", flush=True)
                        said = True
            else:
                ses.pop_alerts()
            time.sleep(1 if not said else 2)
    elif mode == "get":
        params = lt.parse_magnet_uri(sys.argv[4])
        params.save_path = sys.argv[5]
        handle = ses.add_torrent(params)
        deadline = time.time() + float(sys.argv[6])
        while time.time() < deadline:
            ses.pop_alerts()
            if handle.status().is_seeding:
                print("done", flush=True)
                sys.exit(0)
            time.sleep(0.2)
        print("error: download did not finish", flush=True)
        sys.exit(1)
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
