#!/usr/bin/env bash
# The hang-up scenario on a real network: EfficientNet-Lite0 in a Python
# function (max = 2 workers, a 602,112-byte float32 tensor per request);
# each of 30 rounds, 16 clients send a request and close their sockets 5-60 ms
# later (every other one part-way through its body) while 2 clients wait for
# their answers; then 4 calls one by one. Prints the staying clients' answers
# by class and how many workers were started during the run (0 is right).
#
#   bench/hangups.sh [extra `sedge bench hangups` arguments]
#
# SEDGE_MODELS: the models folder (default ../shared/models); SEDGE_BIN: the
# sedge binary (default target/release/sedge, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
models=${SEDGE_MODELS:-../shared/models}
bin=${SEDGE_BIN:-${CARGO_TARGET_DIR:-target}/release/sedge}
[ -x "$bin" ] || cargo build --release --locked -p sedge
scripts/setup.sh
export SEDGE_PYTHON="${SEDGE_PYTHON:-$PWD/.venv/bin/python}"
tmp=$(mktemp -d)
node_pid=
cleanup() { [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
cp -r bench/functions/effnet-tensor "$tmp/effnet"
cp "$models/efficientnet-lite0.onnx" "$tmp/effnet/"
"$SEDGE_PYTHON" -c 'import numpy as np, sys; np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32).tofile(sys.argv[1])' "$tmp/tensor.bin"
# A password for this run's node; the CLI and curl use it too.
export SEDGE_ADMIN_PASSWORD="bench-$RANDOM$RANDOM$RANDOM" SEDGE_PASSWORD
SEDGE_PASSWORD=$SEDGE_ADMIN_PASSWORD
"$bin" serve --listen 127.0.0.1:0 --data "$tmp/data" --deploy "$tmp/effnet" >"$tmp/out" 2>"$tmp/node.log" &
node_pid=$!
for _ in $(seq 300); do grep -q '^sedge listening on ' "$tmp/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^sedge listening on //p' "$tmp/out" | head -1)
[ -n "$url" ] || { cat "$tmp/node.log" >&2; exit 1; }
# Both workers up before the run, so that any start during it is a restart.
"$bin" scale effnet --replicas 2 --gateway "$url" >/dev/null
for _ in $(seq 600); do
  curl -fsS -u "admin:$SEDGE_PASSWORD" "$url/system/function/effnet" | grep -q '"availableReplicas":2' && break
  sleep 0.1
done
"$bin" bench hangups "$url/function/effnet" --data "@$tmp/tensor.bin" "$@"
