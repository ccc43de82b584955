#!/usr/bin/python3
"""A libtorrent peer for Swarmcast's interop tests (run with /usr/bin/python3: Debian's
python3-libtorrent). Modes:

  lt_peer.py seed TORRENT DATA_DIR PORT        check DATA_DIR, print "ready", seed until killed
  lt_peer.py get TORRENT OUT_DIR PORT PEER_PORT [TIMEOUT]
                                               download from 127.0.0.1:PEER_PORT (LT_IPV6=1:
                                               [::1]:PEER_PORT), print "done"
  lt_peer.py create PATH OUT PIECE_SIZE        write OUT, libtorrent's own torrent of PATH (v1 + v2
                                               hybrid, as qBittorrent makes them: every file
                                               padded to a piece boundary with BEP 47 pad files)
  lt_peer.py scrape TORRENT TRACKER_URL PORT   scrape TRACKER_URL for TORRENT (the torrent is
                                               added paused), print "scrape SEEDERS LEECHERS"
                                               and exit 0; exit 1 on an error or after 30 s

Settings follow shared/REAL-PEERS.md: loopback only, no DHT/LSD/UPnP/NAT-PMP/uTP, several
connections per IP allowed (every peer is 127.0.0.1). Protocol encryption is libtorrent's
default (try encrypted, accept both) unless LT_ENCRYPTION says:
  require      encrypted connections only, RC4 for the payload (qBittorrent's "require")
  require-any  encrypted handshakes only, payload RC4 or plaintext
  disable      plain BitTorrent only
LT_RATE_LIMIT=BYTES caps uploads and downloads at BYTES a second (a peer that stays a leecher and
hardly serves, to prove its neighbours found others through peer exchange). LT_STAY=1 keeps a
`get` running after "done". LT_IPV6=1 puts the session on [::1] instead of 127.0.0.1.
LT_UTP_ONLY=1 speaks to peers over uTP only (no TCP). `get` prints "peer HOST:PORT SOURCES" for each peer it ends connected
to, SOURCES from libtorrent's peer_info (pex, dht, tracker, ...), before "done".
"""
import os
import sys
import time

import libtorrent as lt

ENCRYPTION = {
    "require": (lt.enc_policy.forced, lt.enc_level.rc4),
    "require-any": (lt.enc_policy.forced, lt.enc_level.both),
    "disable": (lt.enc_policy.disabled, lt.enc_level.both),
}


def settings(port):
    """The session settings above, for a session listening on 127.0.0.1:PORT."""
    host = "[::1]" if os.environ.get("LT_IPV6") == "1" else "127.0.0.1"
    settings = {
        "listen_interfaces": f"{host}:{port}",
        "outgoing_interfaces": host.strip("[]"),
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "alert_mask": 0,
    }
    if os.environ.get("LT_UTP_ONLY") == "1":
        # Peers over uTP alone (BEP 29): no TCP either way.
        settings.update({"enable_outgoing_utp": True, "enable_incoming_utp": True,
                         "enable_outgoing_tcp": False, "enable_incoming_tcp": False})
    mode = os.environ.get("LT_ENCRYPTION")
    if mode:
        policy, level = ENCRYPTION[mode]
        settings["out_enc_policy"] = int(policy)
        settings["in_enc_policy"] = int(policy)
        settings["allowed_enc_level"] = int(level)
    return settings


# libtorrent's peer_source_flags_t (the python binding does not export `incoming`).
SOURCES = [("tracker", 1), ("dht", 2), ("pex", 4), ("lsd", 8), ("resume", 16), ("incoming", 32)]


def session(port):
    return lt.session(settings(port))


def add(ses, torrent, save_path):
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = save_path
    h = ses.add_torrent(params)
    limit = os.environ.get("LT_RATE_LIMIT")
    if limit:
        # Per-torrent limits: the session's would spare loopback peers (the "local" class).
        h.set_upload_limit(int(limit))
        h.set_download_limit(int(limit))
    return h


def main():
    mode = sys.argv[1]
    if mode == "seed":
        torrent, data, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
        ses = session(port)
        h = add(ses, torrent, data)
        deadline = time.time() + 120
        while not h.status().is_seeding:
            if time.time() > deadline:
                print(f"error: data did not verify: {h.status().progress:.2f}", flush=True)
                sys.exit(1)
            time.sleep(0.1)
        print("ready", flush=True)
        while True:
            time.sleep(1)
    elif mode == "get":
        torrent, out, port, peer = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 120
        ses = session(port)
        h = add(ses, torrent, out)
        host = "::1" if os.environ.get("LT_IPV6") == "1" else "127.0.0.1"
        started = time.time()
        h.connect_peer((host, peer))
        deadline = time.time() + timeout
        last = 0
        while not h.status().is_seeding:
            if time.time() > deadline:
                print(f"error: timed out at {h.status().progress:.2f}", flush=True)
                sys.exit(1)
            if time.time() - last > 5:
                # Re-dial in case the first attempt raced the peer's start.
                h.connect_peer((host, peer))
                last = time.time()
            time.sleep(0.1)
        for p in h.get_peer_info():
            sources = [name for name, flag in SOURCES if p.source & flag]
            print(f"peer {p.ip[0]}:{p.ip[1]} {','.join(sources)}", flush=True)
        print(f"seconds {time.time() - started:.3f}", flush=True)
        print("done", flush=True)
        while os.environ.get("LT_STAY") == "1":
            time.sleep(1)
    elif mode == "create":
        path, out, piece = sys.argv[2], sys.argv[3], int(sys.argv[4])
        fs = lt.file_storage()
        lt.add_files(fs, path)
        t = lt.create_torrent(fs, piece)
        lt.set_piece_hashes(t, os.path.dirname(os.path.abspath(path)))
        with open(out, "wb") as f:
            f.write(lt.bencode(t.generate()))
    elif mode == "scrape":
        torrent, url, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
        s = settings(port)
        s["alert_mask"] = lt.alert.category_t.all_categories
        # libtorrent's SSRF mitigation refuses HTTP requests to a tracker on loopback whose
        # path is not /announce: a scrape there fails before it is sent ("blocked by SSRF
        # mitigation", error 201) unless it is off.
        s["ssrf_mitigation"] = False
        ses = lt.session(s)
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(torrent)
        params.ti.add_tracker(url, 0)
        params.save_path = os.path.dirname(os.path.abspath(torrent))
        params.flags = (params.flags | lt.torrent_flags.paused) & ~lt.torrent_flags.auto_managed
        h = ses.add_torrent(params)
        trackers = [t["url"] for t in h.trackers()]
        h.scrape_tracker(trackers.index(url))
        deadline = time.time() + 30
        while time.time() < deadline:
            for a in ses.pop_alerts():
                if isinstance(a, lt.scrape_reply_alert):
                    print(f"scrape {a.complete} {a.incomplete}", flush=True)
                    sys.exit(0)
                if isinstance(a, lt.scrape_failed_alert):
                    print(f"error: {a.error_message()}", flush=True)
                    sys.exit(1)
            time.sleep(0.1)
        print("error: no scrape reply", flush=True)
        sys.exit(1)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
