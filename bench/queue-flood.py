#!/usr/bin/env python3
"""Clients posting large bodies to a function whose queue is full.

A function with one worker and no queue (max = 1, queue = 0) is held busy by
one request; then CLIENTS connections each send the headers and a BODY-byte
body at once, as most HTTP libraries do, and read the answer. Then the held request is let go. Prints the
answers by status, the clients whose sending failed, and the node's peak and
settled resident memory (the gateway process only, not its workers).

    bench/queue-flood.py [SEDGE_BIN] [--clients 200] [--body-mib 8] [--queue 0] [--serve-arg=--max-body-memory=64MiB]

With --queue above 0 the bodies that find a place are read and held, up to
the node's --max-body-memory; the rest get 503.

SEDGE_BIN defaults to $CARGO_TARGET_DIR/debug/sedge (or target/debug/sedge);
SEDGE_PYTHON is the functions' interpreter (default .venv/bin/python).
"""

import argparse
import base64
import collections
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HOLD = """
import os, time

def handle(req):
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.02)
    return "released"
"""


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    p = argparse.ArgumentParser()
    p.add_argument("bin", nargs="?", default=os.path.join(target, "debug", "sedge"))
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--body-mib", type=int, default=8)
    p.add_argument("--queue", type=int, default=0, help="the function's queue (0: full at once)")
    p.add_argument("--serve-arg", action="append", default=[], help="one more `sedge serve` argument")
    args = p.parse_args()
    python = os.environ.get("SEDGE_PYTHON", os.path.join(root, ".venv", "bin", "python"))
    tmp = tempfile.mkdtemp()
    release = os.path.join(tmp, "release")
    fn = os.path.join(tmp, "hold")
    os.makedirs(fn)
    with open(os.path.join(fn, "handler.py"), "w") as f:
        f.write(HOLD)
    with open(os.path.join(fn, "sedge.toml"), "w") as f:
        f.write(
            'name = "hold"\nruntime = "python"\nhandler = "handler.handle"\n'
            f'[limits]\ntimeout = "300s"\nqueue = {args.queue}\nmax_body = "64MiB"\n'
            f'[scale]\nmin = 1\nmax = 1\n[env]\nRELEASE = "{release}"\n'
        )
    # A password for this run's node; the CLI and the describe calls use it.
    password = "bench-" + secrets.token_hex(8)
    auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
    node = subprocess.Popen(
        [args.bin, "serve", "--listen", "127.0.0.1:0", "--data", os.path.join(tmp, "data"), "--python", python, *args.serve_arg],
        stdout=subprocess.PIPE,
        stderr=open(os.path.join(tmp, "node.log"), "w"),
        text=True,
        env=dict(os.environ, SEDGE_ADMIN_PASSWORD=password),
    )
    try:
        url = node.stdout.readline().strip().removeprefix("sedge listening on ")
        host, port = url.removeprefix("http://").split(":")
        env = dict(os.environ, SEDGE_GATEWAY=url, SEDGE_PASSWORD=password)
        subprocess.run([args.bin, "deploy", "--wait", fn], env=env, check=True, stdout=subprocess.DEVNULL)
        held = threading.Thread(target=lambda: urllib.request.urlopen(url + "/function/hold", b"x", timeout=600).read())
        held.start()
        while True:
            describe = urllib.request.Request(url + "/system/function/hold", headers=auth)
            d = json.load(urllib.request.urlopen(describe))
            if d["sedge"]["workers"]["busy"] == 1:
                break
            time.sleep(0.05)
        base = rss_kib(node.pid)
        body = b"b" * (args.body_mib * 1024 * 1024)
        head = (
            f"POST /function/hold HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        answers = collections.Counter()
        lock = threading.Lock()
        sent = threading.Semaphore(0)
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(node.pid))
                time.sleep(0.02)

        def client():
            status = None
            try:
                s = socket.create_connection((host, int(port)), timeout=120)
                s.sendall(head + body)
            except OSError as e:
                status = "send failed: " + type(e).__name__
            finally:
                sent.release()
            if status is None:
                try:
                    status = s.recv(64).split(b" ")[1].decode()
                except (OSError, IndexError) as e:
                    status = "no answer: " + type(e).__name__
            with lock:
                answers[status] += 1

        sampler = threading.Thread(target=sample)
        sampler.start()
        clients = [threading.Thread(target=client) for _ in range(args.clients)]
        for c in clients:
            c.start()
        # Every client has sent its body or ended; those queued wait for the
        # held request, so the memory now is what the node holds for them.
        for _ in clients:
            sent.acquire()
        time.sleep(1)
        holding = rss_kib(node.pid)
        open(release, "w").close()
        for c in clients:
            c.join()
        held.join()
        time.sleep(3)
        done.set()
        sampler.join()
        settled = rss_kib(node.pid)
        print(f"{args.clients} clients x {args.body_mib} MiB, queue {args.queue}: {dict(answers)}")
        print(
            f"node RSS: {base / 1024:.0f} MiB before, peak {peak[0] / 1024:.0f} MiB, "
            f"{holding / 1024:.0f} MiB with all bodies sent, {settled / 1024:.0f} MiB 3 s after the last answer"
        )
    finally:
        node.terminate()
        node.wait()


if __name__ == "__main__":
    sys.exit(main())
