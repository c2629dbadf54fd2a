#!/usr/bin/env python3
"""Hostile load against a running node (not a test; benches/hostile-load.sh drives it).

  hostile-load.py slow URL BLOB_HASH SIZE     10,000 half-header connections plus 200
                                              never-reading HTTP/2 streams on 50
                                              connections; a normal client's download
                                              throughput before and during; node RSS.
  hostile-load.py flood URL PID RATE SECS     checks from 100,000 made-up device ids at
                                              RATE/s from 127.0.0.1 for SECS; legitimate
                                              checks from 127.0.0.2 timed before and during.

Loopback only; every phase is bounded in time and stops by itself. Prints JSON.
"""
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
import urllib.parse


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def host_port(url):
    u = urllib.parse.urlparse(url)
    assert u.hostname in ("127.0.0.1", "localhost", "::1"), "loopback only"
    return u.hostname, u.port


def download(host, port, path, size, source="127.0.0.1"):
    """One whole-object GET over HTTP/1.1; returns MB/s."""
    s = socket.create_connection((host, port), source_address=(source, 0))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    t0 = time.monotonic()
    got = 0
    buf = bytearray(1 << 20)
    while True:
        n = s.recv_into(buf)
        if n == 0:
            break
        got += n
    dt = time.monotonic() - t0
    s.close()
    assert got > size, f"short download: {got} bytes"
    return size / dt / 1e6


def h2_headers_frame(stream, path):
    # HPACK: :method GET (static 2), :scheme http (static 6), :path literal with
    # indexed name 4, :authority literal with indexed name 1.
    block = bytes([0x82, 0x86, 0x04, len(path)]) + path.encode() + bytes([0x01, 1]) + b"x"
    head = len(block).to_bytes(3, "big") + bytes([0x01, 0x05]) + stream.to_bytes(4, "big")
    return head + block


def slow(url, blob, size):
    host, port = host_port(url)
    pid = int(os.environ["NODE_PID"])
    path = f"/v1/blobs/{blob}"
    base_rss = rss_mib(pid)
    before = [download(host, port, path, size) for _ in range(3)]
    held = []
    # 10,000 connections that send half a header and then nothing.
    for i in range(10_000):
        s = socket.create_connection((host, port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        held.append(s)
    # 50 HTTP/2 connections, 4 streams each, asking for the big blob and never reading.
    for c in range(50):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
        for k in range(4):
            frames += h2_headers_frame(1 + 2 * k, path)
        s.sendall(frames)
        held.append(s)
    time.sleep(2)
    during = [download(host, port, path, size) for _ in range(3)]
    peak = rss_mib(pid)
    open_now = len(held)
    for s in held:
        s.close()
    out = {
        "held_connections": open_now,
        "node_rss_mib_before": round(base_rss, 1),
        "node_rss_mib_during": round(peak, 1),
        "download_mb_s_before": [round(x, 1) for x in before],
        "download_mb_s_during": [round(x, 1) for x in during],
        "ratio_median": round(statistics.median(during) / statistics.median(before), 3),
    }
    print(json.dumps(out, indent=1))


def check(host, port, device, source):
    body = json.dumps({"product": "gw", "device_id": device, "version": "1.0.0"})
    s = socket.create_connection((host, port), source_address=(source, 0))
    req = (
        f"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()
    t0 = time.monotonic()
    s.sendall(req)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1]), (time.monotonic() - t0) * 1000


def legit(host, port, secs, rate, out):
    lat, statuses = [], {}
    end = time.monotonic() + secs
    i = 0
    while time.monotonic() < end:
        status, ms = check(host, port, f"legit-{i % 50}", "127.0.0.2")
        statuses[status] = statuses.get(status, 0) + 1
        lat.append(ms)
        i += 1
        time.sleep(1 / rate)
    lat.sort()
    out["p50_ms"] = round(lat[len(lat) // 2], 2)
    out["p99_ms"] = round(lat[int(len(lat) * 0.99) - 1], 2)
    out["statuses"] = statuses


def flood(url, rate, secs):
    host, port = host_port(url)
    pid = int(os.environ["NODE_PID"])
    unloaded = {}
    legit(host, port, 10, 50, unloaded)
    statuses = {}
    lock = threading.Lock()
    stop = time.monotonic() + secs
    ids = iter(range(100_000))

    def worker(n_workers):
        per = rate / n_workers
        nxt = time.monotonic()
        while time.monotonic() < stop:
            try:
                i = next(ids)
            except StopIteration:
                return
            try:
                st, _ = check(host, port, f"made-up-{i}-{random.random()}", "127.0.0.1")
            except OSError:
                st = -1
            with lock:
                statuses[st] = statuses.get(st, 0) + 1
            nxt += 1 / per
            time.sleep(max(0, nxt - time.monotonic()))

    threads = [threading.Thread(target=worker, args=(32,)) for _ in range(32)]
    for t in threads:
        t.start()
    loaded = {}
    legit(host, port, secs - 2, 50, loaded)
    for t in threads:
        t.join()
    print(
        json.dumps(
            {
                "flood_statuses": statuses,
                "flood_sent": sum(statuses.values()),
                "flood_rate_per_s": round(sum(statuses.values()) / secs),
                "legit_unloaded": unloaded,
                "legit_during_flood": loaded,
                "p99_ratio": round(loaded["p99_ms"] / unloaded["p99_ms"], 2),
                "node_rss_mib": round(rss_mib(pid), 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "slow":
        slow(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "flood":
        flood(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(__doc__)
