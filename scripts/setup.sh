#!/usr/bin/env bash
# Installs what sedge's runtimes, examples and tests need beyond Rust: the
# Python packages in requirements.txt. Python 3 and Node.js 20 are expected
# on the machine. Quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "sedge needs python3 on PATH" >&2; exit 1; }
command -v node >/dev/null || echo "warning: node is not on PATH; node functions will not run" >&2
if ! python3 -c 'import numpy, onnxruntime, flask, bottle' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
fi
