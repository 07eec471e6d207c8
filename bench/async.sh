#!/usr/bin/env bash
# Figures for asynchronous calls on this machine (docs/benchmarks.md, "Asynchronous
# calls"): accepted /async-function calls per second with every commit synced
# to disk, the latency from 202 to callback at light load, and the recovery
# after a kill -9 with about 1,000 calls queued.
# Usage: bench/async.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
cargo build --release --locked -p sedge >/dev/null
bin="${CARGO_TARGET_DIR:-target}/release/sedge"
source bench/local-node.sh

fn() { # NAME MANIFEST-EXTRA PYTHON-CODE
  mkdir -p "$work/$1"
  printf 'name = "%s"\nruntime = "python"\nhandler = "handler.handle"\n%b' "$1" "$2" > "$work/$1/sedge.toml"
  printf '%b' "$3" > "$work/$1/handler.py"
  "$bin" deploy --wait "$work/$1" >/dev/null
}
# Holds each call 60 s, one at a time: the queue only grows, so the first
# figure is the node accepting, not running, calls.
fn parked '[limits]\ntimeout = "90s"\n[async]\nconcurrency = 1\n' 'import time\ndef handle(req):\n    time.sleep(60)\n    return req.body\n'
fn echo '' 'def handle(req):\n    return req.body.upper()\n'
fn drain '[scale]\nmax = 2\n[async]\nconcurrency = 2\n' 'import time\ndef handle(req):\n    time.sleep(0.01)\n    return req.body.upper()\n'
head -c 256 /dev/zero | tr '\0' 'x' > "$work/body"

echo "## accepted calls per second (fsync on every commit; 256-byte bodies; ${secs}s)"
for users in 1 16 64; do
  echo "### $users clients"
  "$bin" bench load -c "$users" --duration "${secs}s" -d @"$work/body" "$url/async-function/parked" | sed -n '1,12p'
done

echo "## 202 -> callback latency at light load"
python3 bench/async-calls.py latency "$url" echo 200 20

echo "## recovery after kill -9 with about 1,000 calls queued"
python3 bench/async-calls.py recover "$bin" "$work/drain" 1000
