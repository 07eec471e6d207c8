#!/usr/bin/env bash
# Step load on EfficientNet-Lite0 in Python ([scale] cpu = $STEP_CPU, default 1.0; max = 4):
# 1 user for 5 s, then 64 for 10 s (sedge bench load, keep-alive). Prints
# answers per second, 5xx, workers (ready / busy / desired, sampled every
# 100 ms from describe), when the pool settled, and the throughput after
# settling against the last 5 s (the steady state). Needs scripts/setup.sh.
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
sleep 3
load() { "$bin" bench load "$url/function/effnet" -c "$1" --duration "$2" -d "@$models/samples/chelsea-224.f32" \
  -H content-type:application/octet-stream --csv "$3" > /dev/null; }
python3 - "$url" "$work" > "$work/samples" <<'PY' &
import base64, json, os, sys, time, urllib.request
url, work = sys.argv[1], sys.argv[2]
auth = "Basic " + base64.b64encode(f"admin:{os.environ['SEDGE_PASSWORD']}".encode()).decode()
end = time.time() + 17
while time.time() < end and not os.path.exists(f"{work}/done"):
    req = urllib.request.Request(url + "/system/function/effnet", headers={"authorization": auth})
    d = json.loads(urllib.request.urlopen(req, timeout=5).read())
    w = d["sedge"]["workers"]
    print(time.time(), w["ready"], w["busy"], d["sedge"]["scale"]["desired"], flush=True)
    time.sleep(0.1)
PY
sampler=$!
t0=$(date +%s.%N)
load 1 15s "$work/one.csv" &
one=$!
sleep 5
t1=$(date +%s.%N)
load 63 10s "$work/many.csv"
wait "$one"
touch "$work/done"
wait "$sampler" || true
python3 - "$work" "$t0" "$t1" <<'PY'
import csv, sys
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
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
print("answers per second from the step (s: req/s): " + ", ".join(
    f"{s}: {sum(1 for a in done if s <= a < s + 1)}" for s in range(-2, 10)))
print(f"5xx or failed requests: {errors}")
after = [s for s in samples if s[0] >= 0]
changes = [t for (t, r, b, d), prev in zip(after[1:], after) if (r, d) != (prev[1], prev[3])]
settled = max(changes) if changes else 0.0
print(f"pool settled {settled:.1f} s after the step (last change of ready/desired); "
      f"busy workers at most {max(b for _, _, b, _ in after)}; ready at most {max(r for _, r, _, _ in after)}; "
      f"desired at most {max(d for _, _, _, d in after)}")
print("workers (t s: ready/busy/desired): " + ", ".join(f"{t:.1f}: {r}/{b}/{d}" for t, r, b, d in after[::5]))
steady = sum(1 for a in done if 5 <= a < 10) / 5
late = sum(1 for a in done if max(settled, 0) <= a < 10) / max(10 - max(settled, 0), 1e-9)
first2 = sum(1 for a in done if 0 <= a < 2) / 2
print(f"throughput: steady (5-10 s) {steady:.1f} req/s; from settling to 10 s {late:.1f} req/s "
      f"({100 * late / steady:.0f} %); first 2 s {first2:.1f} req/s ({100 * first2 / steady:.0f} %)")
PY
