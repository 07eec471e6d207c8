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
# The dashboard in a real browser, against the debug binary the tests built.
# It prints `browser: N passed, M failed`, or `browser: skipped (WHY)`.
target="${CARGO_TARGET_DIR:-$PWD/target}"
if command -v node >/dev/null; then
    SEDGE_BIN="$target/debug/sedge" node ui-tests/dashboard.test.mjs 2>&1 | tee "$log" || true
else
    echo "browser: skipped (no node here)" | tee "$log"
fi
read -r ui_passed ui_failed < <(awk '/^browser: [0-9]+ passed/ {p = $2; f = $4} END {print p + 0, f + 0}' "$log")
if ! grep -q '^browser: ' "$log"; then
    # It ended before its summary line: count it as one failure.
    ui_failed=1
fi
echo "total: $((passed + py_passed + ui_passed)) passed, $((failed + ui_failed)) failed"
