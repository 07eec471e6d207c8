#!/usr/bin/env bash
# Installs the test dependencies (Python packages) and runs every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -d runtimes/tests ]; then
  python3 -m unittest discover -s runtimes/tests
fi
cargo test --workspace --locked 2>&1
