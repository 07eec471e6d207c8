#!/usr/bin/env python3
"""The Python shim's own CPU a request for a function calling sedge.infer
(the effnet-infer handler), with sedge played by this script: a
602,112-byte invoke body, each infer frame answered at once with a
4,000-byte FP32 output, INFLIGHT invocations kept in flight. Reports the
worker process's CPU (/proc/PID/stat) and wall time per request over N
requests after 200 of warm-up. Guards the thread hand-offs of
runtimes/python/sedge_worker.py's `Frames` (docs/models.md). Needs numpy
in the Python that runs the shim (PY, else this one).

Usage: bench/shim-infer.py SHIM CONCURRENCY INFLIGHT N
"""
HANDLER = """import json
import numpy as np
import sedge

def handle(req):
    x = np.frombuffer(req.body, dtype=np.float32).reshape(1, 3, 224, 224)
    logits = sedge.infer("m", x)
    return json.dumps({"class": int(np.argmax(logits[0]))})
"""
import json, os, queue, shutil, socket, struct, subprocess, sys, tempfile, threading, time
PREFIX = struct.Struct(">II")
if len(sys.argv) != 5:
    sys.exit(__doc__)
shim, conc, inflight, n = os.path.abspath(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fn_dir = tempfile.mkdtemp()
with open(os.path.join(fn_dir, "handler.py"), "w") as h:
    h.write(HANDLER)
body = bytes(602112)
answer = bytes(4000)
ours, theirs = socket.socketpair()
ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
proc = subprocess.Popen([os.environ.get("PY", sys.executable), "-u", shim, fn_dir, "handler.handle"], cwd=fn_dir,
    env=dict(os.environ, SEDGE_CHANNEL_FD=str(theirs.fileno()), SEDGE_MODELS="m", SEDGE_CONCURRENCY=conc),
    pass_fds=[theirs.fileno()])
theirs.close()
f = ours.makefile("rb")
# A writer of its own, as sedge has: this script never stops reading to write.
out = queue.Queue()
def writer():
    while True:
        item = out.get()
        if item is None: return
        ours.sendall(item[0])
        if item[1]: ours.sendall(item[1])
threading.Thread(target=writer, daemon=True).start()
def send(h, b=b""):
    raw = json.dumps(h).encode()
    out.put((PREFIX.pack(len(raw), len(b)) + raw, b))
def read():
    hl, bl = PREFIX.unpack(f.read(8)); h = json.loads(f.read(hl)); b = f.read(bl); return h, b
def invoke(i):
    send({"type": "invoke", "id": i, "method": "POST", "path": "/", "query": "", "headers": [["content-type", "application/octet-stream"]], "timeout_ms": 30000}, body)
assert read()[0]["type"] == "ready"
def stat():
    with open(f"/proc/{proc.pid}/stat") as s: x = s.read().rsplit(")", 1)[1].split()
    return int(x[11]) + int(x[12])
sent = done = 0
def run(count):
    global sent, done
    target = done + count
    while sent < done + inflight and sent < target: sent += 1; invoke(sent)
    while done < target:
        h, b = read()
        if h["type"] == "infer":
            send({"type": "infer_result", "id": h["id"], "outputs": [{"name": "o", "datatype": "FP32", "shape": [1, 1000], "size": 4000}]}, answer)
        else:
            assert h["type"] == "response", h
            done += 1
            if sent < target: sent += 1; invoke(sent)
run(200)
t0, c0 = time.perf_counter(), stat()
run(n)
t1, c1 = time.perf_counter(), stat()
hz = os.sysconf("SC_CLK_TCK")
print(f"conc {conc} inflight {inflight}: worker CPU {(c1-c0)/hz*1e3/n:.3f} ms/req, wall {(t1-t0)*1e3/n:.3f} ms/req")
out.put(None); time.sleep(0.2); ours.shutdown(socket.SHUT_WR); proc.wait()
shutil.rmtree(fn_dir)
