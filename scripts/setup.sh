#!/usr/bin/env bash
# Installs what sedge's runtimes, examples and tests need beyond Rust:
# the Python packages of requirements.txt (Node.js 20 and Python 3.11 are
# expected on the machine). Quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f requirements.txt ] && ! python3 -c 'import numpy, onnxruntime' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
fi
# A target dir outside the clone (CI keeps one between runs) saves a rebuild.
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /work/.cargo-target ]; then
  echo "using CARGO_TARGET_DIR=/work/.cargo-target"
fi
