#!/usr/bin/env python3
"""What sedge.infer saves in memory: 4 Python workers that call the node's
EfficientNet-Lite0 through sedge.infer against 4 that each load it with
onnxruntime themselves. Each worker serves requests first; then the RSS of
the worker processes (from /proc, summed) and the node's own are printed.

  scripts/infer-memory.py [SEDGE_BINARY] [MODEL_DIR]

Defaults: target/release/sedge (or $CARGO_TARGET_DIR's) and ../shared/models.
Needs the node's Python (SEDGE_PYTHON) with numpy and onnxruntime.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = 4

CALLER = """import numpy as np
import sedge

def handle(req):
    x = np.frombuffer(req.body, dtype=np.float32).reshape(1, 3, 224, 224)
    return int(sedge.infer("effnet", x)[0].argmax())
"""

OWN = """import numpy as np
import onnxruntime as ort

options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession("efficientnet-lite0.onnx", options, providers=["CPUExecutionProvider"])

def handle(req):
    x = np.frombuffer(req.body, dtype=np.float32).reshape(1, 3, 224, 224)
    return int(session.run(None, {"input": x})[0][0].argmax())
"""


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pids_named(name):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else str(
        Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "sedge")
    models = Path(sys.argv[2] if len(sys.argv) > 2 else REPO / "../shared/models")
    tmp = Path(tempfile.mkdtemp(prefix="sedge-mem-"))
    password = secrets.token_hex(8)
    env = dict(os.environ, SEDGE_ADMIN_PASSWORD=password, SEDGE_LOG="warn")
    node = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--data", str(tmp / "data")],
                            env=env, stdout=subprocess.PIPE, text=True)
    url = node.stdout.readline().strip().removeprefix("sedge listening on ")
    cli_env = dict(os.environ, SEDGE_GATEWAY=url, SEDGE_PASSWORD=password)
    try:
        idle_node = rss_kib(node.pid)
        scale = f"[scale]\nmin = {WORKERS}\nmax = {WORKERS}\nconcurrency = 1\n[limits]\nmax_body = \"2MiB\"\n"
        effnet = tmp / "effnet"
        effnet.mkdir()
        shutil.copy(models / "efficientnet-lite0.onnx", effnet / "efficientnet-lite0.onnx")
        (effnet / "sedge.toml").write_text(
            'name = "effnet"\nruntime = "onnx"\nhandler = "efficientnet-lite0.onnx"\n[limits]\nmax_body = "2MiB"\n')
        own = tmp / "own"
        own.mkdir()
        shutil.copy(models / "efficientnet-lite0.onnx", own / "efficientnet-lite0.onnx")
        (own / "sedge.toml").write_text(f'name = "own"\nruntime = "python"\nhandler = "handler.handle"\n{scale}')
        (own / "handler.py").write_text(OWN)
        caller = tmp / "caller"
        caller.mkdir()
        (caller / "sedge.toml").write_text(
            f'name = "caller"\nruntime = "python"\nhandler = "handler.handle"\nmodels = ["effnet"]\n{scale}')
        (caller / "handler.py").write_text(CALLER)
        for d in (effnet, own, caller):
            subprocess.run([binary, "deploy", "--wait", str(d)], env=cli_env, check=True, capture_output=True)
        body = bytes(602112)

        def post(name, n):
            for _ in range(n):
                req = urllib.request.Request(f"{url}/function/{name}", data=body, method="POST")
                with urllib.request.urlopen(req) as r:
                    r.read()

        report = {"node_idle_kib": idle_node}
        for name in ("caller", "own"):
            threads = [threading.Thread(target=post, args=(name, 10)) for _ in range(WORKERS * 2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            pids = pids_named(name)
            report[name] = {"workers": len(pids), "rss_kib": [rss_kib(p) for p in pids]}
            report[name]["total_kib"] = sum(report[name]["rss_kib"])
        report["node_with_model_kib"] = rss_kib(node.pid)
        print(json.dumps(report, indent=1))
        shared = report["caller"]["total_kib"] + report["node_with_model_kib"] - idle_node
        print(f"{WORKERS} workers calling sedge.infer: {report['caller']['total_kib'] / 1024:.0f} MiB "
              f"(+ {(report['node_with_model_kib'] - idle_node) / 1024:.0f} MiB in the node for the model: "
              f"{shared / 1024:.0f} MiB in all); {WORKERS} loading it themselves: "
              f"{report['own']['total_kib'] / 1024:.0f} MiB")
    finally:
        node.terminate()
        node.wait()


if __name__ == "__main__":
    main()
