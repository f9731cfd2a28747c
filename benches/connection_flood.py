#!/usr/bin/env python3
"""Connection flood against a real `qoima serve` (issue #23; figures in docs/reliability.md).

Starts the binary on the embedded development default in a temporary directory under a
descriptor limit (soft and hard, like `ulimit -n`), then:

1. keeps --connections idle TCP connections open (they send nothing; one the vault closes is
   opened again at once),
2. holds the flood for --hold seconds, writing one subject a second on a fresh connection and
   sampling the vault's open descriptors (/proc/PID/fd) against its limit (/proc/PID/limits),
3. closes them all and measures how long until a write is served again (a fresh connection
   each try),
4. reports connections opened, descriptors used and left, writes during and after, /readyz.

    cargo build --release
    python3 benches/connection_flood.py --binary target/release/qoima --nofile 1024 \
        --connections 4000 --hold 20

Only the standard library; Linux (reads /proc).
"""

import argparse
import errno
import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time


def descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return -1


def http(addr, method, path, token=None, body=None, timeout=30.0):
    """One request on a fresh connection; (status, seconds) or (None, seconds) on failure."""
    start = time.monotonic()
    head = f"{method} {path} HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    data = (body or "").encode()
    if method != "GET":
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            s.settimeout(max(0.1, timeout - (time.monotonic() - start)))
            s.sendall(head.encode() + b"\r\n" + data)
            got = b""
            while b"\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        status = int(got.split()[1]) if got.startswith(b"HTTP/") else None
        return status, time.monotonic() - start
    except OSError:
        return None, time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/qoima")
    ap.add_argument("--nofile", type=int, default=1024, help="descriptor limit of the vault (soft and hard)")
    ap.add_argument("--connections", type=int, default=4000)
    ap.add_argument("--hold", type=float, default=20.0, help="seconds the flood is held")
    args = ap.parse_args()

    # The flooding side needs its own descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 64:
        sys.exit(f"this process may open {hard} descriptors; --connections {args.connections} needs more")

    cwd = tempfile.mkdtemp(prefix="qoima-flood-")
    limit = args.nofile

    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    env = dict(os.environ, QOIMA_LISTEN="127.0.0.1:0")
    vault = subprocess.Popen([os.path.abspath(args.binary), "serve"], cwd=cwd, env=env, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, preexec_fn=lower, text=True)
    lines, addr = [], None
    for line in vault.stderr:
        lines.append(line.rstrip())
        m = re.match(r"qoima: listening on http://([\d.]+):(\d+)", line)
        if m:
            addr = (m.group(1), int(m.group(2)))
            break
    if addr is None:
        sys.exit("the vault did not start:\n" + "\n".join(lines))
    threading.Thread(target=lambda: [lines.append(l.rstrip()) for l in vault.stderr], daemon=True).start()
    token = next(w for l in lines for w in l.split() if w.startswith("qv1_"))  # the service caller's
    pid = vault.pid
    put = lambda s: http(addr, "PUT", f"/v1/subjects/{s}", token, json.dumps({"fields": {"identity.full_name": "Flood"}}))

    status, _ = put("before")
    assert status == 201, status
    time.sleep(0.5)
    before = descriptors(pid)
    report = {"vault_descriptor_limit": soft_limit(pid), "descriptors_before": before,
              "cap_warning": [l for l in lines if "max_connections" in l][:1]}

    # 1. The flood: --connections sockets kept open; one the vault closes is opened again at
    # once, as an attacker would.
    stop = threading.Event()
    counts = {"opened": 0, "closed_by_vault": 0, "connect_errors": 0}
    socks = set()

    def flood():
        sel = selectors.DefaultSelector()

        def open_one():
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                counts["connect_errors"] += 1
                s.close()
                return
            sel.register(s, selectors.EVENT_READ)
            socks.add(s)
            counts["opened"] += 1

        while not stop.is_set():
            while len(socks) < args.connections and not stop.is_set():
                open_one()
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    socks.discard(s)
                    s.close()
                    counts["closed_by_vault"] += 1
        for s in list(socks):
            sel.unregister(s)
            s.close()
        socks.clear()

    t0 = time.monotonic()
    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    while len(socks) < args.connections and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    report["flood_sockets_opened_in_seconds"] = round(time.monotonic() - t0, 2)

    # 2. Hold it; one write a second, each on a fresh connection (it queues with the flood's).
    peak, writes = before, []
    end = time.monotonic() + args.hold
    while time.monotonic() < end:
        peak = max(peak, descriptors(pid))
        status, took = put(f"during-{len(writes)}")
        writes.append((status, round(took, 2)))
        peak = max(peak, descriptors(pid))
        time.sleep(max(0.0, 1.0 - took))
    report["descriptors_peak_during_flood"] = peak
    report["descriptors_left_at_peak"] = report["vault_descriptor_limit"] - peak
    lat = sorted(t for s, t in writes if s == 201)
    report["writes_during_flood"] = {"served": len(lat), "tried": len(writes),
                                     "seconds_min_median_max": [lat[0], lat[len(lat) // 2], lat[-1]] if lat else None}
    report["flood"] = dict(counts)

    # 3. The flood ends.
    stop.set()
    flooder.join()
    t1 = time.monotonic()
    while True:
        status, _ = put("after")
        if status == 201 or time.monotonic() - t1 > 120:
            break
        time.sleep(0.05)
    report["recovery_seconds"] = round(time.monotonic() - t1, 3)
    report["write_after_flood"] = status
    report["readyz_after_flood"] = http(addr, "GET", "/readyz")[0]
    time.sleep(1)
    report["descriptors_after"] = descriptors(pid)
    report["vault_still_running"] = vault.poll() is None
    report["accept_errors_logged"] = sum(1 for l in lines if "accept failed" in l)
    vault.terminate()
    vault.wait(timeout=40)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
