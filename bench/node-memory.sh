#!/usr/bin/env bash
# The node's own memory (RSS of the sedge process, workers excluded) idle,
# after a 64-user load of EfficientNet-Lite0 tensors (602,112-byte bodies) on
# a Python function, and after the same on the onnx runtime: what a burst
# leaves behind in the gateway. Needs scripts/fetch-models.sh first.
#
#   bench/node-memory.sh [SEDGE_BINARY]        # default target/release/sedge
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sedge}
models=models
[ -s "$models/efficientnet-lite0.onnx" ] || { echo "run scripts/fetch-models.sh first" >&2; exit 1; }
. bench/local-node.sh
rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$node/status"; }
stage() { mkdir -p "$work/$2"; cp -r "bench/functions/$1/." "$work/$2/"; cp "$models/efficientnet-lite0.onnx" "$work/$2/"; }
stage effnet-tensor py
stage effnet-onnx onnx
"$bin" deploy --wait "$work/py" > /dev/null 2>&1
"$bin" deploy --wait "$work/onnx" > /dev/null 2>&1
sleep 3  # past a model's release of its arena after 2 s quiet
echo "idle, both functions ready: node RSS $(rss) MiB"
for fn in effnet effnet-onnx; do
  "$bin" bench load "$url/function/$fn" -c 64 --duration 5s -d "@$models/samples/chelsea-224.f32" \
    -H content-type:application/octet-stream > "$work/load-$fn" 2>&1
  echo "after 64 users on $fn: node RSS $(rss) MiB; $(awk '$1 == "throughput" {print $2 " req/s"}' "$work/load-$fn")"
  sleep 12
  echo "  12 s later: node RSS $(rss) MiB"
done
