#!/usr/bin/env python3
"""Measures the Python shim's own cost per call: feeds it N invoke frames for
a trivial handler from a file (no gateway, no waiting on pipes) and reports
the time per frame. Guards the hot path of runtimes/python/sedge_worker.py.

Usage: bench/shim-frames.py [N]
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(REPO, "runtimes", "python", "sedge_worker.py")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "handler.py"), "w") as f:
            f.write("def handle(req):\n    return 'hi'\n")
        header = json.dumps(
            {"type": "invoke", "id": 1, "method": "GET", "path": "/", "query": "",
             "headers": [["host", "127.0.0.1:8080"]], "timeout_ms": 10000}
        ).encode()
        frames = os.path.join(tmp, "frames.bin")
        with open(frames, "wb") as f:
            f.write((struct.pack(">II", len(header), 0) + header) * n)
        # The same run with no frames measures start-up, which is subtracted.
        empty = os.path.join(tmp, "empty.bin")
        open(empty, "wb").close()
        timings = []
        for source in (empty, frames):
            with open(source, "rb") as stdin:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-u", SHIM, tmp, "handler.handle"], stdin=stdin,
                               stdout=subprocess.DEVNULL, check=True, cwd=tmp)
                timings.append(time.perf_counter() - start)
    per_call = (timings[1] - timings[0]) / n * 1e6
    print(f"{n} calls: {per_call:.1f} µs per call (start-up {timings[0] * 1000:.0f} ms excluded)")


if __name__ == "__main__":
    main()
