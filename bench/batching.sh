#!/usr/bin/env bash
# What dynamic batching gains, per model (and, for EfficientNet, what one
# two-thread session does against two single-thread ones): each model served by the onnx
# runtime without and with [batching] (max_batch 8, max_delay 2ms), loaded
# by 16 users sending one-row input tensors, in one run. Models with a dynamic
# batch dimension: the OCR orientation classifier ([N,3,48,192]) and
# EfficientNet-Lite0's dynamic copy ([N,3,224,224]). Needs
# scripts/fetch-models.sh first.
#
#   bench/batching.sh [SEDGE_BINARY] [USERS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sedge}
users=${2:-16}
duration=${3:-5s}
[ -s models/ocr-orientation-cls.onnx ] || { echo "run scripts/fetch-models.sh first" >&2; exit 1; }
. bench/local-node.sh
# Every model gets 2 single-thread sessions (whatever the node's core
# budget has left after the first), except effnet-1x2: one session of two
# threads, the other way to spend two cores.
# name model shape batching input [sessions threads]: each request is one row, sent in the inference
# protocol's binary form (the OCR model's height and width are dynamic, so
# a raw body could not say them).
deploy_model() {
  mkdir -p "$work/$1"
  cp "models/$2" "$work/$1/model.onnx"
  printf 'name = "%s"\nruntime = "onnx"\nhandler = "model.onnx"\n[model]\ninstances = %s\nthreads = %s\n[limits]\nmax_body = "2MiB"\nqueue = 512\n%s' \
    "$1" "${6:-2}" "${7:-1}" "$4" > "$work/$1/sedge.toml"
  "$bin" deploy --wait "$work/$1" > /dev/null 2>&1
  "$SEDGE_PYTHON" - "$work/$1.body" "$work/$1.len" "$5" "$3" <<'PY'
import json, struct, sys, random
out, length, name, shape = sys.argv[1], sys.argv[2], sys.argv[3], [int(d) for d in sys.argv[4].split(",")]
n = 1
for d in shape:
    n *= d
data = struct.pack(f"<{n}f", *(random.random() for _ in range(n)))
head = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                               "parameters": {"binary_data_size": len(data)}}]}, separators=(",", ":")).encode()
open(out, "wb").write(head + data)
open(length, "w").write(str(len(head)))
PY
}
batched=$'[batching]\nmax_batch = 8\nmax_delay = "2ms"\n'
deploy_model ocr ocr-orientation-cls.onnx 1,3,48,192 "" x
deploy_model ocr-batched ocr-orientation-cls.onnx 1,3,48,192 "$batched" x
deploy_model effnet efficientnet-lite0-dynamic.onnx 1,3,224,224 "" input
deploy_model effnet-batched efficientnet-lite0-dynamic.onnx 1,3,224,224 "$batched" input
# max_delay 0: no waiting, only what queued while both sessions were busy is stacked.
busy=$'[batching]\nmax_batch = 8\nmax_delay = "0ms"\n'
deploy_model ocr-busy ocr-orientation-cls.onnx 1,3,48,192 "$busy" x
deploy_model effnet-busy efficientnet-lite0-dynamic.onnx 1,3,224,224 "$busy" input
deploy_model effnet-1x2 efficientnet-lite0-dynamic.onnx 1,3,224,224 "" input 1 2
printf '%-16s %6s %8s %8s %8s %8s\n' function users "req/s" "p50 ms" "p99 ms" "ok %"
for f in ocr ocr-batched ocr-busy effnet effnet-batched effnet-busy effnet-1x2; do
  "$bin" bench load "$url/v2/models/$f/infer" -c "$users" --duration "$duration" -d "@$work/$f.body" \
    -H "inference-header-content-length:$(cat "$work/$f.len")" > "$work/load-$f" 2>&1
  rps=$(awk '$1 == "throughput" {print $2}' "$work/load-$f")
  p50=$(awk '$1 == "p50" {print $2}' "$work/load-$f")
  p99=$(awk '$1 == "p99" {print $2}' "$work/load-$f")
  ok=$(awk '$1 == "success" {print $3}' "$work/load-$f")
  printf '%-16s %6s %8s %8s %8s %8s\n' "$f" "$users" "${rps:-?}" "${p50:-?}" "${p99:-?}" "${ok:-?}"
done
