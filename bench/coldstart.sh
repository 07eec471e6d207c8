#!/usr/bin/env bash
# Cold starts, from outside the node: scale from zero to first answer (p50
# over TRIES tries, default 15) for hello Python, hello Node.js, digits
# (Python, onnxruntime) and EfficientNet-Lite0 in Python, then a second
# worker beside a warm one for the two ML functions, with where each start
# went by phase. Needs scripts/setup.sh (venv, models) first.
#
#   bench/coldstart.sh [SEDGE_BINARY] [extra serve flags...]   # default target/release/sedge
#   e.g. bench/coldstart.sh target/release/sedge --zygotes false
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sedge}
shift || true
models=models
[ -s "$models/efficientnet-lite0.onnx" ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
SERVE_FLAGS="$*"
. bench/local-node.sh
stage_effnet
python3 -c 'import json; print(json.dumps({"pixels": [0, 0, 5, 13, 9, 1, 0, 0] * 8}))' > "$work/digits.json"
for dir in examples/functions/hello-python examples/functions/hello-node examples/functions/digits-python "$work/effnet"; do
  "$bin" deploy --wait "$dir" > /dev/null
done
python3 bench/coldstart.py "$url" \
  "hello-python::text/plain" \
  "hello-node::text/plain" \
  "digits-python+:$work/digits.json:application/json" \
  "effnet+:$models/samples/chelsea-224.f32:application/octet-stream"
