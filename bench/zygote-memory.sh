#!/usr/bin/env bash
# Memory (PSS, /proc/PID/smaps_rollup) of 4 warm workers of EfficientNet-Lite0
# in Python: forked from the function's zygote, and started fresh
# (--zygotes false), each after 16 inferences spread over the workers (with the
# zygote and its standby, the worker it keeps forked ahead); and
# of one fresh worker alone.
# Needs scripts/setup.sh (venv, models) first; run as root (the sandbox).
#
#   bench/zygote-memory.sh [SEDGE_BINARY]     # default target/release/sedge
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sedge}
models=models
[ -s "$models/efficientnet-lite0.onnx" ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
measure() {
  (
    SERVE_FLAGS="$1"
    . bench/local-node.sh
    stage_effnet
    sed -i 's/^max = 2$/max = 4/' "$work/effnet/sedge.toml"
    "$bin" deploy --wait "$work/effnet" > /dev/null
    sleep 3 # the zygote, when there is one, is up by then
    "$bin" scale effnet --replicas 0 > /dev/null
    sleep 1
    "$bin" scale effnet --replicas "$2" > /dev/null
    python3 - "$url" "$models/samples/chelsea-224.f32" "$1" "$2" <<'PY'
import json, os, sys, threading, time, urllib.request
url, sample, flags, count = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3], int(sys.argv[4])
def comm(pid):
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return ""
def ppid(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
def pss_mib(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0
def procs():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and comm(p) == "effnet"]
def ns_pid(pid):  # the pid a sandboxed worker sees itself as (and answers with)
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid
answered = set()
def post():
    req = urllib.request.Request(url + "/function/effnet", data=sample, headers={"content-type": "application/octet-stream"})
    answered.add(json.loads(urllib.request.urlopen(req, timeout=60).read())["pid"])
end = time.monotonic() + 60
while True:
    all_ = procs()
    zygotes = {ppid(p) for p in all_ if ppid(p) in all_}
    workers = [p for p in all_ if p not in zygotes and (not zygotes or ppid(p) in zygotes)]
    if len(workers) >= count + bool(zygotes) or time.monotonic() > end:
        break
    time.sleep(0.2)
for _ in range(4):
    calls = [threading.Thread(target=post) for _ in range(4)]
    [c.start() for c in calls]
    [c.join() for c in calls]
time.sleep(1)
# A zygote's child that answered nothing is its standby (forked ahead, docs/scaling.md).
standby = [p for p in workers if ns_pid(p) not in answered]
workers = [p for p in workers if p not in standby]
pss = [pss_mib(p) for p in workers]
zy = sum(pss_mib(z) for z in zygotes)
sb = sum(pss_mib(p) for p in standby)
label = "forked from the zygote" if zygotes else "fresh processes"
print(f"{flags or 'default'}: {len(workers)} worker(s) {label}: PSS each " + ", ".join(f"{v:.1f}" for v in pss)
      + f" MiB; sum {sum(pss):.1f} MiB" + (f"; zygote {zy:.1f} MiB; its standby {sb:.1f} MiB; sum with both {sum(pss) + zy + sb:.1f} MiB" if zygotes else ""))
PY
  )
}
measure "" 4
measure "--zygotes false" 4
measure "--zygotes false" 1
