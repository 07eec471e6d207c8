#!/usr/bin/env bash
# Measures one sedge node on this machine: warm-invoke throughput and
# latency (wrk, keep-alive, closed loop) of hello-python, hello-node and digits-python at
# 1 and 16 clients, the node's idle memory, deploy-to-first-answer and
# cold-start times. Needs wrk (Debian: apt-get install wrk).
# Usage: bench/node-baseline.sh [SECONDS_PER_STEP]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
port=18931
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --locked -p sedge >/dev/null
bin="${CARGO_TARGET_DIR:-target}/release/sedge"
data=$(mktemp -d)
"$bin" serve --listen 127.0.0.1:$port --data "$data" >/dev/null 2>"$data/serve.log" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$data"' EXIT
export SEDGE_GATEWAY=http://127.0.0.1:$port
until curl -sf "$SEDGE_GATEWAY/healthz" >/dev/null; do sleep 0.05; done

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }
replicas() { curl -s "$SEDGE_GATEWAY/system/function/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["availableReplicas"])'; }

echo "## idle node"
sleep 1
echo "node RSS with no functions: $(( $(rss_kib $node) / 1024 )) MiB"

echo "## deploy to first answer"
for fn in hello-python digits-python hello-node; do
  t0=$(now_ms)
  "$bin" deploy "examples/functions/$fn" >/dev/null
  body=/dev/null; [ "$fn" = digits-python ] && body=examples/functions/digits-python/sample.json
  curl -sf -d @"$body" "$SEDGE_GATEWAY/function/$fn" >/dev/null
  echo "$fn: $(( $(now_ms) - t0 )) ms"
done

echo "## cold start (scaled to zero, one request)"
for fn in hello-python digits-python hello-node; do
  "$bin" scale "$fn" --replicas 0 >/dev/null
  until [ "$(replicas $fn)" = 0 ]; do sleep 0.1; done
  body=/dev/null; [ "$fn" = digits-python ] && body=examples/functions/digits-python/sample.json
  t0=$(now_ms)
  curl -sf -d @"$body" "$SEDGE_GATEWAY/function/$fn" >/dev/null
  echo "$fn: $(( $(now_ms) - t0 )) ms"
done

echo "## memory with three functions warm"
for fn in hello-python digits-python hello-node; do curl -sf -d @/dev/null "$SEDGE_GATEWAY/function/$fn" >/dev/null || true; done
echo "node RSS: $(( $(rss_kib $node) / 1024 )) MiB"
for w in $(pgrep -P $node); do echo "worker $w $(tr '\0' ' ' < /proc/$w/cmdline | awk '{print $NF}') in $(basename "$(readlink /proc/$w/cwd)" | cut -c1-19): $(( $(rss_kib $w) / 1024 )) MiB"; done

echo "## warm invoke (wrk, ${secs}s per step)"
for c in 1 16; do
  for fn in hello-python hello-node digits-python; do
    args=(); [ "$fn" = digits-python ] && args=(-s bench/post-json.lua)
    out=$(BODY=examples/functions/digits-python/sample.json wrk -t1 -c$c -d${secs}s --latency "${args[@]}" "$SEDGE_GATEWAY/function/$fn")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "$fn c=$c: $rps req/s, p50 $p50, p99 $p99, non-2xx ${errs:-0}"
  done
done
