#!/usr/bin/env python3
"""What one ONNX Runtime session costs in memory and time, with and without
prepacked weights, on a model (default models/efficientnet-lite0.onnx): the
figures behind sedge's session settings (docs/models.md, "Cores and
memory"). Each setting runs in a fresh process, so no arena carries over.

  .venv/bin/python bench/ort-session-memory.py [MODEL]
"""

import subprocess
import sys

PROBE = r"""
import sys, time
import numpy as np
import onnxruntime as ort

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

model, prepack = sys.argv[1], sys.argv[2] == "on"
base = rss()
o = ort.SessionOptions()
o.intra_op_num_threads = 1
o.inter_op_num_threads = 1
if not prepack:
    o.add_session_config_entry("session.disable_prepacking", "1")
s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in s.get_inputs()}
s.run(None, feed)
t = time.perf_counter()
for _ in range(50):
    s.run(None, feed)
ms = (time.perf_counter() - t) / 50 * 1000
print(f"prepacking {sys.argv[2]:3}: session +{rss() - base:.0f} MiB, {ms:.1f} ms a run")
"""


def main(argv):
    model = argv[1] if len(argv) > 1 else "models/efficientnet-lite0.onnx"
    for prepack in ("on", "off"):
        subprocess.run([sys.executable, "-c", PROBE, model, prepack], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
