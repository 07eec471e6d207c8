#!/usr/bin/env bash
# What dynamic batching gains, per model: each model served by the onnx
# runtime without and with [batching] (max_batch 8, max_delay 2ms), loaded
# by 16 users sending raw input tensors, in one run. Models with a dynamic
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
work=$(mktemp -d)
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null; rm -rf "$work"' EXIT
export SEDGE_PYTHON=${SEDGE_PYTHON:-$PWD/.venv/bin/python} SEDGE_ADMIN_PASSWORD=bench-batching SEDGE_PASSWORD=bench-batching
"$bin" serve --listen 127.0.0.1:0 --data "$work/data" > "$work/out" 2> "$work/err" &
node=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^sedge listening on //p' "$work/out")
export SEDGE_GATEWAY=$url
# name model bytes-per-input batching
deploy_model() {
  mkdir -p "$work/$1"
  cp "models/$2" "$work/$1/model.onnx"
  printf 'name = "%s"\nruntime = "onnx"\nhandler = "model.onnx"\n[limits]\nmax_body = "2MiB"\nqueue = 512\n%s' "$1" "$4" > "$work/$1/sedge.toml"
  "$bin" deploy --wait "$work/$1" > /dev/null
  head -c "$3" /dev/urandom > "$work/$1.bin"
}
batched=$'[batching]\nmax_batch = 8\nmax_delay = "2ms"\n'
deploy_model ocr ocr-orientation-cls.onnx $((3 * 48 * 192 * 4)) ""
deploy_model ocr-batched ocr-orientation-cls.onnx $((3 * 48 * 192 * 4)) "$batched"
deploy_model effnet efficientnet-lite0-dynamic.onnx $((3 * 224 * 224 * 4)) ""
deploy_model effnet-batched efficientnet-lite0-dynamic.onnx $((3 * 224 * 224 * 4)) "$batched"
printf '%-16s %6s %8s %8s %8s %8s\n' function users "req/s" "p50 ms" "p99 ms" "ok %"
for f in ocr ocr-batched effnet effnet-batched; do
  "$bin" bench load "$url/function/$f" -c "$users" --duration "$duration" -d "@$work/$f.bin" \
    -H content-type:application/octet-stream > "$work/load-$f" 2>&1
  rps=$(awk '$1 == "throughput" {print $2}' "$work/load-$f")
  p50=$(awk '$1 == "p50" {print $2}' "$work/load-$f")
  p99=$(awk '$1 == "p99" {print $2}' "$work/load-$f")
  ok=$(awk '$1 == "success" {print $3}' "$work/load-$f")
  printf '%-16s %6s %8s %8s %8s %8s\n' "$f" "$users" "${rps:-?}" "${p50:-?}" "${p99:-?}" "${ok:-?}"
done
