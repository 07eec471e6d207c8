#!/usr/bin/env bash
# Step load on EfficientNet-Lite0 in Python ([scale] cpu = $STEP_CPU, default 1.0; max = 4),
# STEP_CYCLES times (default 3) in one run: the function scaled to zero, 1 user for 4 s, then
# 64 users for 14 s (sedge bench load, keep-alive). Each cycle prints answers per second, 5xx,
# workers (ready / busy / desired, sampled every 100 ms from describe), when the pool settled,
# and the throughput in the 4 s after settling against the steady state of the same cycle
# (8-14 s after the step, the pool long settled), so both come from the same minutes of a
# shared machine. Needs scripts/setup.sh.
#
#   bench/step-load.sh [SEDGE_BINARY] [extra serve flags...]   # default target/release/sedge
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sedge}
shift || true
models=models
[ -s "$models/efficientnet-lite0.onnx" ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
SERVE_FLAGS="$*"
. bench/local-node.sh
stage_effnet
sed -i "s/^max = 2\$/max = 4\ncpu = ${STEP_CPU:-1.0}/" "$work/effnet/sedge.toml"
"$bin" deploy --wait "$work/effnet" > /dev/null
load() { "$bin" bench load "$url/function/effnet" -c "$1" --duration "$2" -d "@$models/samples/chelsea-224.f32" \
  -H content-type:application/octet-stream --csv "$3" > /dev/null; }
admin() { python3 - "$url" "$@" <<'PY'
import base64, json, os, sys, time, urllib.request
url, what = sys.argv[1], sys.argv[2]
auth = "Basic " + base64.b64encode(f"admin:{os.environ['SEDGE_PASSWORD']}".encode()).decode()
def call(path, body=None):
    req = urllib.request.Request(url + path, data=body, headers={"authorization": auth, "content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=5).read() or b"null")
if what == "zero":  # scale to zero and wait until the workers are gone
    call("/system/scale-function/effnet", json.dumps({"serviceName": "effnet", "replicas": 0}).encode())
    while call("/system/function/effnet")["availableReplicas"] != 0:
        time.sleep(0.05)
else:  # sample the pool every 100 ms for 20 s or until $work/done
    work = sys.argv[3]
    end = time.time() + 20
    while time.time() < end and not os.path.exists(f"{work}/done"):
        d = call("/system/function/effnet")
        w = d["sedge"]["workers"]
        print(time.time(), w["ready"], w["busy"], d["sedge"]["scale"]["desired"], flush=True)
        time.sleep(0.1)
PY
}
for cycle in $(seq "${STEP_CYCLES:-3}"); do
  admin zero
  sleep 2  # the zygote's standby is back by then
  rm -f "$work/done"
  admin sample "$work" > "$work/samples" &
  sampler=$!
  t0=$(date +%s.%N)
  load 1 18s "$work/one.csv" &
  one=$!
  sleep 4
  t1=$(date +%s.%N)
  load 63 14s "$work/many.csv"
  wait "$one"
  touch "$work/done"
  wait "$sampler" || true
  python3 - "$work" "$t0" "$t1" "$cycle" <<'PY'
import csv, sys
work, t0, t1, cycle = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
done, errors = [], 0
for name, start in (("one.csv", t0), ("many.csv", t1)):
    for row in csv.DictReader(open(f"{work}/{name}")):
        at = start + (int(row["send_us"]) + int(row["latency_us"])) / 1e6 - t1  # answer time, from the step
        status = int(row["status"])
        if status >= 500 or row["outcome"] != "ok":
            errors += 1
        else:
            done.append(at)
samples = [l.split() for l in open(f"{work}/samples")]
samples = [(float(t) - t1, int(r), int(b), int(d)) for t, r, b, d in samples]
def rate(a, b):
    return sum(1 for t in done if a <= t < b) / (b - a)
print(f"cycle {cycle}:")
print("  answers per second from the step (s: req/s): " + ", ".join(
    f"{s}: {sum(1 for a in done if s <= a < s + 1)}" for s in range(-2, 14)))
after = [s for s in samples if s[0] >= 0]
changes = [t for (t, r, b, d), prev in zip(after[1:], after) if (r, d) != (prev[1], prev[3])]
settled = max(max(changes) if changes else 0.0, 0.0)
print(f"  5xx or failed requests: {errors}; pool settled {settled:.1f} s after the step (last change of "
      f"ready/desired); busy workers at most {max(b for _, _, b, _ in after)}; ready at most "
      f"{max(r for _, r, _, _ in after)}; desired at most {max(d for _, _, _, d in after)}")
print("  workers (t s: ready/busy/desired): " + ", ".join(f"{t:.1f}: {r}/{b}/{d}" for t, r, b, d in after[::10]))
steady, late, first2, control = rate(8, 14), rate(settled, settled + 4), rate(0, 2), rate(4, 8)
# The control is a window as long, well after settling: how far the machine's
# other load moves a settled pool's rate within one cycle.
print(f"  throughput: steady (8-14 s) {steady:.1f} req/s; 4 s after settling {late:.1f} req/s "
      f"({100 * late / steady:.0f} %); first 2 s {first2:.1f} req/s ({100 * first2 / steady:.0f} %); "
      f"control 4-8 s {control:.1f} req/s ({100 * control / steady:.0f} %)")
with open(f"{work}/ratios", "a") as f:
    f.write(f"{100 * late / steady:.1f} {errors} {settled:.1f} {100 * control / steady:.1f}\n")
PY
done
python3 - "$work" <<'PY'
import statistics, sys
rows = [l.split() for l in open(f"{sys.argv[1]}/ratios")]
ratios, controls = [float(r[0]) for r in rows], [float(r[3]) for r in rows]
print(f"after settling / steady, per cycle: {', '.join(f'{r:.0f} %' for r in ratios)}; median {statistics.median(ratios):.0f} %; "
      f"control (4-8 s) / steady: {', '.join(f'{r:.0f} %' for r in controls)}; median {statistics.median(controls):.0f} %; "
      f"5xx in all: {sum(int(r[1]) for r in rows)}; settled at most {max(float(r[2]) for r in rows):.1f} s after the step")
PY
