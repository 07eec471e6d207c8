#!/usr/bin/env bash
# Runs every test suite: formatting and lints, the runtime shims' own tests
# (Python unittest) and the Rust workspace (unit, property and end-to-end
# tests), after installing what they need. Ends with one line adding up all suites.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Python functions run on the environment setup.sh filled.
export SEDGE_PYTHON="${SEDGE_PYTHON:-$PWD/.venv/bin/python}"
# The workspace's formatting and lints are part of the tests.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$SEDGE_PYTHON" -m unittest discover -s runtimes/tests 2>&1 | tee "$log"
py_passed=$(awk '/^Ran [0-9]+ test/ {print $2}' "$log")
cargo test --workspace --locked 2>&1 | tee "$log"
read -r passed failed < <(awk '/^test result:/ {p += $4; f += $6} END {print p + 0, f + 0}' "$log")
echo "total: $((passed + py_passed)) passed, $failed failed"
