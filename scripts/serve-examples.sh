#!/usr/bin/env bash
# The quick start's main job: build sedge and run a node on 127.0.0.1:8080
# serving every example function. Extra arguments go to `sedge serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Python functions run on the environment setup.sh filled.
export SEDGE_PYTHON="${SEDGE_PYTHON:-$PWD/.venv/bin/python}"
cargo build --release --locked -p sedge
dirs=()
for d in examples/functions/*/; do
  dirs+=(--deploy "$d")
done
exec "${CARGO_TARGET_DIR:-target}/release/sedge" serve "${dirs[@]}" "$@"
