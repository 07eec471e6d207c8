"""What a Node.js cold start costs three ways, medians over TRIES (15):
a fresh `node sedge_worker.js` to its ready frame; a started spare told to
load the function (load frame to ready: what sedge does today); and the
floor of any V8 startup snapshot, a snapshot whose main does nothing but
say it is up (a snapshot of the shim could only be slower than that).

    python3 bench/node-startup.py [FUNCTION_DIR]   # default examples/functions/hello-node
"""

import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "runtimes" / "node" / "sedge_worker.js"
FUNCTION = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "examples" / "functions" / "hello-node").resolve()
TRIES = int(os.environ.get("TRIES", "15"))
PREFIX = struct.Struct(">II")


def read_frame(sock):
    data = b""
    while len(data) < PREFIX.size:
        data += sock.recv(PREFIX.size - len(data))
    h, b = PREFIX.unpack(data)
    rest = b""
    while len(rest) < h + b:
        rest += sock.recv(h + b - len(rest))
    return json.loads(rest[:h])


def spawn(argv):
    ours, theirs = socket.socketpair()
    env = {**os.environ, "SEDGE_CHANNEL_FD": str(theirs.fileno()), "SEDGE_FUNCTION": "hello-node"}
    proc = subprocess.Popen(argv, cwd=FUNCTION, env=env, pass_fds=[theirs.fileno()], stdout=subprocess.DEVNULL)
    theirs.close()
    return proc, ours


def fresh():
    began = time.perf_counter()
    proc, sock = spawn(["node", str(SHIM), str(FUNCTION), "handler.handle"])
    assert read_frame(sock)["type"] == "ready"
    took = time.perf_counter() - began
    sock.close()
    proc.wait()
    return took


def spare():
    proc, sock = spawn(["node", str(SHIM), "--spare"])
    assert read_frame(sock)["type"] == "spare"
    raw = json.dumps({"type": "load", "dir": str(FUNCTION), "handler": "handler.handle",
                      "env": {"SEDGE_FUNCTION": "hello-node"}}).encode()
    began = time.perf_counter()
    sock.sendall(PREFIX.pack(len(raw), 0) + raw)
    assert read_frame(sock)["type"] == "ready"
    took = time.perf_counter() - began
    sock.close()
    proc.wait()
    return took


def snapshot_floor(blob):
    began = time.perf_counter()
    out = subprocess.run(["node", "--snapshot-blob", blob], capture_output=True, check=True).stdout
    assert out == b"up\n"
    return time.perf_counter() - began


with tempfile.TemporaryDirectory() as tmp:
    entry, blob = Path(tmp, "entry.js"), str(Path(tmp, "snap.blob"))
    entry.write_text("require('v8').startupSnapshot.setDeserializeMainFunction(() => process.stdout.write('up\\n'));\n")
    subprocess.run(["node", "--snapshot-blob", blob, "--build-snapshot", str(entry)], check=True)
    rows = {"fresh node, shim to ready": [], "spare, load frame to ready": [], "V8 snapshot floor (empty main)": []}
    for _ in range(TRIES):
        rows["fresh node, shim to ready"].append(fresh())
        rows["spare, load frame to ready"].append(spare())
        rows["V8 snapshot floor (empty main)"].append(snapshot_floor(blob))
for name, values in rows.items():
    print(f"{name}: p50 {statistics.median(values) * 1000:.1f} ms (min {min(values) * 1000:.1f})")
