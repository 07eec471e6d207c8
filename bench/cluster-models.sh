#!/usr/bin/env bash
# What sharing models and secrets across the cluster costs (docs/cluster.md,
# "Models" and "Credentials"), on one machine over loopback: a nats-server
# with JetStream on a free port and two nodes, a (label `front`) and b
# (label `models`), the digits model placed on b only.
#
#   bench/cluster-models.sh [SEDGE_BINARY] [SECONDS]   # default target/release/sedge, 10
#
# 1. The inference protocol: one binary-tensor infer request (one row of 64
#    floats) to b itself (local) and to a (forwarded to b), 1 and 8 users.
# 2. sedge.infer from a Python function: the caller on b beside the model
#    (local) and the caller on a with the model on b (remote), 1 and 8 users.
# 3. A secret update made on a, seen by a function running on b: from the
#    update's answer to the first call on b that reads the new value, 5 times.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sedge}
secs=${2:-10}
# shellcheck source=bench/cluster-common.sh
source bench/cluster-common.sh
start a "${cluster[@]}" --node-name a --labels front
start b "${cluster[@]}" --node-name b --labels models
export SEDGE_GATEWAY=$url_a

mkdir -p "$work/digits"
cp examples/functions/digits-python/model.onnx "$work/digits/"
cat > "$work/digits/sedge.toml" <<'TOML'
name = "digits"
runtime = "onnx"
handler = "model.onnx"
[placement]
labels = ["models"]
TOML
# caller NAME LABEL: a Python function running the sample through sedge.infer.
caller() {
  mkdir -p "$work/$1"
  cat > "$work/$1/sedge.toml" <<TOML
name = "$1"
runtime = "python"
handler = "handler.handle"
models = ["digits"]
[scale]
min = 2
max = 2
concurrency = 4
[placement]
labels = ["$2"]
TOML
  cat > "$work/$1/handler.py" <<'PY'
import numpy as np
import sedge

def handle(req):
    pixels = np.array(req.json()["pixels"], dtype=np.float32).reshape(1, 64)
    return str(int(sedge.infer("digits", {"pixels": pixels})["label"][0]))
PY
}
caller caller-b models
caller caller-a front
for f in digits caller-b caller-a; do "$bin" deploy --wait "$work/$f" > /dev/null; done
sample=examples/functions/digits-python/sample.json
# The binary infer request: its JSON header, then the row's 256 bytes.
header_len=$(python3 - "$sample" "$work/infer.bin" <<'PY'
import json, struct, sys
row = json.load(open(sys.argv[1]))["pixels"]
head = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                               "parameters": {"binary_data_size": 4 * len(row)}}],
                   "parameters": {"binary_data_output": True}}).encode()
open(sys.argv[2], "wb").write(head + struct.pack("<%df" % len(row), *row))
print(len(head))
PY
)

# compare USERS LOCAL_LABEL LOCAL_URL FORWARDED_LABEL FORWARDED_URL [bench flags...]
compare() {
  local users=$1 local_label=$2 local_url=$3 far_label=$4 far_url=$5 p50 p99 rps
  shift 5
  for side in local far; do
    local label=${side}_label url=${side}_url
    read -r p50 p99 rps < <(load "${!url}" "$users" "$@")
    printf '%-28s %s users: p50 %s ms, p99 %s ms, %s req/s (%s %% answered 2xx)\n' \
      "${!label}" "$users" "$p50" "$p99" "$rps" "$(ok)"
  done
}

echo "== the inference protocol, ${secs}s each"
for users in 1 8; do
  compare "$users" "/v2 on b (local)" "$url_b/v2/models/digits/infer" "/v2 on a (forwarded to b)" \
    "$url_a/v2/models/digits/infer" -d "@$work/infer.bin" -H "inference-header-content-length:$header_len"
done

echo "== sedge.infer from Python, ${secs}s each"
for users in 1 8; do
  compare "$users" "caller on b, model on b" "$url_b/function/caller-b" "caller on a, model on b" \
    "$url_a/function/caller-a" -d "@$sample" -H content-type:application/json
done

echo "== a secret updated on a, read by a function on b"
"$bin" secret create bench-secret --from-literal v0 > /dev/null
mkdir -p "$work/vault"
cat > "$work/vault/sedge.toml" <<'TOML'
name = "vault"
runtime = "python"
handler = "handler.handle"
secrets = ["bench-secret"]
[placement]
labels = ["models"]
TOML
cat > "$work/vault/handler.py" <<'PY'
import os

def handle(req):
    with open(os.path.join(os.environ["SEDGE_SECRETS_DIR"], "bench-secret")) as f:
        return f.read()
PY
"$bin" deploy --wait "$work/vault" > /dev/null
for i in 1 2 3 4 5; do
  "$bin" secret update bench-secret --from-literal "v$i" > /dev/null
  t0=$(date +%s.%N)
  until [ "$(curl -s "$url_b/function/vault")" = "v$i" ]; do sleep 0.005; done
  t1=$(date +%s.%N)
  echo "update $i: seen on b $(echo "($t1 - $t0) * 1000" | bc -l | xargs printf '%.1f') ms after its answer"
done
