# Sourced by the bench scripts: starts `$bin serve` on a free loopback port
# with its data in a temporary folder, sets $work, $node, $url and
# SEDGE_GATEWAY / SEDGE_PASSWORD for the CLI, and stops the node and removes
# the folder when the script exits.
work=$(mktemp -d)
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null; rm -rf "$work"' EXIT
password="bench-$$"
export SEDGE_PYTHON=${SEDGE_PYTHON:-$PWD/.venv/bin/python} SEDGE_ADMIN_PASSWORD=$password SEDGE_PASSWORD=$password
# shellcheck disable=SC2086 # SERVE_FLAGS: extra flags, split on spaces
"$bin" serve --listen 127.0.0.1:0 --data "$work/data" ${SERVE_FLAGS:-} > "$work/out" 2> "$work/err" &
node=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^sedge listening on //p' "$work/out")
[ -n "$url" ] || { echo "the node did not start:" >&2; cat "$work/err" >&2; exit 1; }
export SEDGE_GATEWAY=$url

# Stages the EfficientNet-Lite0 Python function (bench/functions/effnet-tensor
# with the model beside it) in $work/effnet, for the scripts that deploy it.
stage_effnet() {
  [ -s models/efficientnet-lite0.onnx ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
  mkdir -p "$work/effnet"
  cp -r bench/functions/effnet-tensor/. "$work/effnet/"
  cp models/efficientnet-lite0.onnx "$work/effnet/"
}
