#!/usr/bin/env bash
# Installs what sedge's runtimes, examples and tests need beyond Rust: the
# Python packages in requirements.txt (and the tests' own, in
# requirements-test.txt), into a virtual environment at .venv/
# (stock Debian, Ubuntu and Raspberry Pi OS refuse system-wide pip, PEP 668).
# Python 3 (with its venv module) and Node.js 20 are expected on the machine.
# Quick when everything is already there. Prints nothing else on success.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "sedge needs python3 on PATH" >&2; exit 1; }
command -v node >/dev/null || echo "warning: node is not on PATH; node functions will not run" >&2
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || {
    echo "cannot create .venv: install Python's venv module (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
if ! .venv/bin/python -c 'import numpy, onnxruntime, flask, bottle, setproctitle' 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
fi
if ! .venv/bin/python -c 'import tritonclient.http' 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
fi
# The repository's own task client (clients/python), editable so the tests
# always drive the code in this checkout.
if ! .venv/bin/python -c 'import sedge_client' 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ./clients/python
fi
# The real models the ONNX examples, tests and benchmarks use (quick when present).
scripts/fetch-models.sh
