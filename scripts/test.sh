#!/usr/bin/env bash
# Runs every test suite: the runtime shims' own tests (Python unittest) and
# the Rust workspace (unit, property and end-to-end tests), after installing
# what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
python3 -m unittest discover -s runtimes/tests
cargo test --workspace --locked
