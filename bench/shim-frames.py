#!/usr/bin/env python3
"""Measures the Python shim's own cost per call: sends it N invoke frames for
a trivial handler over its channel socket, all at once (no gateway, no
waiting for one answer before the next frame), and reports the time per
frame. Guards the hot path of runtimes/python/sedge_worker.py.

Usage: bench/shim-frames.py [N]
"""

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(REPO, "runtimes", "python", "sedge_worker.py")


def run_shim(tmp, frames):
    """Runs the shim until it has answered `frames` and exits; its wall time."""
    ours, theirs = socket.socketpair()
    with ours:
        start = time.perf_counter()
        with theirs:
            proc = subprocess.Popen(
                [sys.executable, "-u", SHIM, tmp, "handler.handle"],
                cwd=tmp, env=dict(os.environ, SEDGE_CHANNEL_FD=str(theirs.fileno())),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=[theirs.fileno()],
            )

        def feed():
            ours.sendall(frames)
            ours.shutdown(socket.SHUT_WR)

        feeder = threading.Thread(target=feed)
        feeder.start()
        # The answers are read and dropped, so the shim never waits on a full socket.
        while ours.recv(1 << 20):
            pass
        feeder.join()
        if proc.wait() != 0:
            sys.exit(f"the shim exited {proc.returncode}")
        return time.perf_counter() - start


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "handler.py"), "w") as f:
            f.write("def handle(req):\n    return 'hi'\n")
        header = json.dumps(
            {"type": "invoke", "id": 1, "method": "GET", "path": "/", "query": "",
             "headers": [["host", "127.0.0.1:8080"]], "timeout_ms": 10000}
        ).encode()
        frames = (struct.pack(">II", len(header), 0) + header) * n
        # The same run with no frames measures start-up, which is subtracted.
        timings = [run_shim(tmp, source) for source in (b"", frames)]
    per_call = (timings[1] - timings[0]) / n * 1e6
    print(f"{n} calls: {per_call:.1f} µs per call (start-up {timings[0] * 1000:.0f} ms excluded)")


if __name__ == "__main__":
    main()
