#!/usr/bin/env python3
"""What ONNX Runtime sessions cost in memory and time on a model (default
models/efficientnet-lite0.onnx): one session with and without prepacked
weights, two sessions against one session run by two threads at once (how
sedge serves a model), and the CPU arena and memory pattern turned off. The
figures behind sedge's session settings (docs/models.md, "Cores and
memory"). Each setting runs in a fresh process, so no arena carries over,
with glibc's mmap threshold fixed as `sedge serve` runs (without it, freed
blocks stay in the heap and every figure is higher).

  .venv/bin/python bench/ort-session-memory.py [MODEL]
"""

import os
import subprocess
import sys

PROBE = r"""
import sys, threading, time
import numpy as np
import onnxruntime as ort

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

model, sessions, runners, prepack, arena, pattern = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *(a == "on" for a in sys.argv[4:7])
ort.set_default_logger_severity(3)
base = rss()
made = []
for _ in range(sessions):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    if not prepack:
        o.add_session_config_entry("session.disable_prepacking", "1")
    o.enable_cpu_mem_arena = arena
    o.enable_mem_pattern = pattern
    made.append(ort.InferenceSession(model, o, providers=["CPUExecutionProvider"]))
feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in made[0].get_inputs()}
for s in made:
    s.run(None, feed)
RUNS = 100
def work(s):
    for _ in range(RUNS):
        s.run(None, feed)
threads = [threading.Thread(target=work, args=(made[i % sessions],)) for i in range(runners)]
t = time.perf_counter()
for th in threads:
    th.start()
for th in threads:
    th.join()
rate = runners * RUNS / (time.perf_counter() - t)
label = f"{sessions} session(s) run by {runners} thread(s), prepacking {sys.argv[4]}, arena {sys.argv[5]}, pattern {sys.argv[6]}"
print(f"{label:75}: +{rss() - base:3.0f} MiB after {runners * RUNS} runs, {rate:4.0f} runs/s")
"""

SETTINGS = [
    # sessions, runners, prepacking, arena, memory pattern
    (1, 1, "on", "on", "on"),
    (1, 1, "off", "on", "on"),
    (2, 2, "off", "on", "on"),
    (1, 2, "off", "on", "on"),
    (1, 2, "off", "off", "on"),
    (1, 2, "off", "on", "off"),
    (1, 2, "off", "off", "off"),
]


def main(argv):
    model = argv[1] if len(argv) > 1 else "models/efficientnet-lite0.onnx"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    for setting in SETTINGS:
        subprocess.run([sys.executable, "-c", PROBE, model, *map(str, setting)], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
