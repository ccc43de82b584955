#!/usr/bin/env python3
"""The TCP flow and the delay probe of scripts/bench-ledbat.sh (the uTP flow is
crates/utp/examples/flow.rs). Every mode stops by itself after SECS.

  tcp-recv PORT SECS        accept one connection; print "epoch_ms bytes" every 500 ms
  tcp-send HOST PORT CC SECS  connect with congestion control CC (cubic, reno, bbr) and write
                            as fast as the connection takes
  echo PORT SECS            answer every UDP datagram with itself
  probe HOST PORT SECS      every 100 ms send a UDP datagram to the echo; print "epoch_ms rtt_ms"
"""
import socket
import sys
import time


def now_ms():
    return int(time.time() * 1000)


def main():
    mode, rest = sys.argv[1], sys.argv[2:]
    secs = float(rest[-1])
    until = time.monotonic() + secs
    if mode == "tcp-recv":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A receive window larger than the bottleneck's buffer (fixed: no auto-tuning), so the
        # flow is limited by the path, as a long-lived TCP download is.
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        srv.bind(("0.0.0.0", int(rest[0])))
        srv.listen(1)
        print("listening", flush=True)
        srv.settimeout(secs)
        conn, _ = srv.accept()
        conn.settimeout(0.5)
        got, last = 0, time.monotonic()
        while time.monotonic() < until:
            try:
                data = conn.recv(1 << 16)
                if not data:
                    break
                got += len(data)
            except socket.timeout:
                pass
            if time.monotonic() - last >= 0.5:
                print(now_ms(), got, flush=True)
                got, last = 0, time.monotonic()
        print(now_ms(), got, flush=True)
    elif mode == "tcp-send":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, rest[2].encode())
        s.settimeout(10)
        s.connect((rest[0], int(rest[1])))
        s.settimeout(1.0)
        chunk = b"\x5a" * (1 << 16)
        while time.monotonic() < until:
            try:
                s.send(chunk)
            except socket.timeout:
                pass
        s.close()
    elif mode == "echo":
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", int(rest[0])))
        u.settimeout(0.5)
        print("listening", flush=True)
        while time.monotonic() < until:
            try:
                data, peer = u.recvfrom(64)
                u.sendto(data, peer)
            except socket.timeout:
                pass
    elif mode == "probe":
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(2.0)
        while time.monotonic() < until:
            sent = time.monotonic()
            u.sendto(b"probe", (rest[0], int(rest[1])))
            try:
                u.recvfrom(64)
                print(now_ms(), round((time.monotonic() - sent) * 1000, 1), flush=True)
            except socket.timeout:
                pass
            time.sleep(max(0.0, 0.1 - (time.monotonic() - sent)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
