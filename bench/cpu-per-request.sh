#!/usr/bin/env bash
# CPU time a request of EfficientNet-Lite0 costs, two sedge binaries side by
# side: each serves effnet-onnx (the onnx runtime, raw 602,112-byte tensor
# bodies) and effnet-infer (Python calling sedge.infer on it), and the two
# are loaded in turn over several rounds, beside ONNX Runtime alone (one
# session, two single-thread runners, as the node runs it). CPU, not
# throughput: on a shared machine throughput follows whatever else runs,
# while the CPU a request costs moves much less. Per request: the node's,
# its workers' and the load generator's utime + stime (/proc/PID/stat)
# over the answers, split into the node's model runner threads (the
# inference), the rest of the node, its workers and the load generator;
# per engine run: what `sedge bench ort` reports. BEFORE and AFTER may be
# the same binary, for the split alone.
#
#   bench/cpu-per-request.sh BEFORE AFTER [ROUNDS] [USERS] [SECONDS]
#   (defaults: 4 rounds of 16 users for 4 s; needs scripts/fetch-models.sh)
# FUNCTIONS lists what is loaded, from bench/functions (default
# "effnet-onnx effnet-infer"; effnet-receive is effnet-infer without its
# model call); effnet-onnx is deployed in any case, as the callers' model.
# SERVE_BEFORE / SERVE_AFTER add `sedge serve` options to either node, to
# set one binary against itself with another setting, e.g.
#   SERVE_BEFORE="--threads 2" SERVE_AFTER="--threads 1" \
#     bench/cpu-per-request.sh target/release/sedge target/release/sedge 3
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2 rounds=${3:-4} users=${4:-16} secs=${5:-4}
read -r -a functions <<< "${FUNCTIONS:-effnet-onnx effnet-infer}"
deployed=(effnet-onnx)
for fn in "${functions[@]}"; do [ "$fn" = effnet-onnx ] || deployed+=("$fn"); done
body=models/samples/chelsea-224.f32
[ -s "$body" ] || { echo "run scripts/fetch-models.sh first" >&2; exit 1; }
export SEDGE_PYTHON=${SEDGE_PYTHON:-$PWD/.venv/bin/python}
work=$(mktemp -d)
nodes=()
trap 'for n in "${nodes[@]}"; do kill "$n" 2>/dev/null; wait "$n" 2>/dev/null; done; rm -rf "$work"' EXIT
tick=$(getconf CLK_TCK)

# Starts BIN as node LABEL with `sedge serve` options OPTIONS (one word
# each); sets url_LABEL and pid_LABEL.
start() {
  local bin=$1 label=$2 dir=$work/$2 options
  read -r -a options <<< "${3:-}"
  local fn
  for fn in "${deployed[@]}"; do
    mkdir -p "$dir/$fn"
    cp -r "bench/functions/$fn/." "$dir/$fn/"
  done
  cp models/efficientnet-lite0.onnx "$dir/effnet-onnx/"
  SEDGE_ADMIN_PASSWORD=bench "$bin" serve --listen 127.0.0.1:0 --data "$dir/data" "${options[@]}" \
    > "$dir/out" 2> "$dir/err" &
  local pid=$!
  nodes+=("$pid")
  for _ in $(seq 100); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  local url
  url=$(sed -n 's/^sedge listening on //p' "$dir/out")
  [ -n "$url" ] || { echo "$label did not start:" >&2; cat "$dir/err" >&2; exit 1; }
  for fn in "${deployed[@]}"; do
    SEDGE_GATEWAY=$url SEDGE_PASSWORD=bench "$bin" deploy --wait "$dir/$fn" > /dev/null 2>&1
  done
  printf -v "url_$label" %s "$url"
  printf -v "pid_$label" %s "$pid"
}

# "PID TICKS" for PID and every process below it: CPU used so far.
tree_ticks() {
  # cat, not awk over the files: a process that ends mid-scan is skipped.
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v root="$1" '
    { pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " "); parent[pid] = f[2]; cpu[pid] = f[12] + f[13] }
    END { for (p in cpu) { q = p; while (q != "" && q != root && q in parent && q != 1) q = parent[q]; if (q == root) print p, cpu[p] } }
  '
}

# Ticks used between two tree_ticks samples: a process that ended meanwhile
# (a worker scaled down) counts for nothing, one that started for all it used.
ticks_between() {
  awk 'NR == FNR { was[$1] = $2; next } { sum += $2 - ($1 in was ? was[$1] : 0) } END { print sum + 0 }' "$1" "$2"
}

# Clock ticks of CPU used by PID itself.
own_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# Clock ticks of CPU used by PID's model runner threads (model-run-N): the
# inference itself, against which the rest is what a request costs beside it.
run_ticks() {
  local sum=0 t
  for t in /proc/"$1"/task/*; do
    case $(cat "$t/comm" 2>/dev/null) in
      model-run-*) sum=$((sum + $(sed 's/^.*) //' "$t/stat" | awk '{print $12 + $13}'))) ;;
    esac
  done
  echo "$sum"
}

# One load of FUNCTION on node LABEL with BIN: req/s, CPU a request in
# all and of the node process alone.
load() {
  local bin=$1 label=$2 fn=$3 url pid
  url=$(eval echo "\$url_$label") pid=$(eval echo "\$pid_$label")
  # Warm: workers started, buffers kept, before the measured window.
  "$bin" bench load "$url/function/$fn" -c "$users" --duration 1s -d "@$body" \
    -H content-type:application/octet-stream > /dev/null 2>&1
  local n0 n1 r0 r1
  tree_ticks "$pid" > "$work/t0"
  n0=$(own_ticks "$pid") r0=$(run_ticks "$pid")
  /usr/bin/time -f "%U %S" -o "$work/gen" "$bin" bench load "$url/function/$fn" -c "$users" --duration "${secs}s" \
    -d "@$body" -H content-type:application/octet-stream > "$work/load" 2>&1
  tree_ticks "$pid" > "$work/t1"
  n1=$(own_ticks "$pid") r1=$(run_ticks "$pid")
  awk -v t="$(ticks_between "$work/t0" "$work/t1")" -v node="$((n1 - n0))" -v runs="$((r1 - r0))" -v hz="$tick" \
    -v secs="$secs" '
    FILENAME ~ /gen$/ { gen = $1 + $2; next }
    $1 == "throughput" { rps = $2 }
    END {
      n = rps * secs; ms = 1000 / hz / n
      printf "%7.1f req/s %6.2f ms in all = model runs %5.2f + rest of node %4.2f + workers %4.2f + load generator %4.2f",
        rps, t * ms + gen * 1000 / n, runs * ms, (node - runs) * ms, (t - node) * ms, gen * 1000 / n
    }
  ' "$work/gen" "$work/load"
}

start "$before" before "${SERVE_BEFORE:-}"
start "$after" after "${SERVE_AFTER:-}"
echo "rounds of $users users, ${secs} s each; CPU per request = node + workers + load generator"
for round in $(seq "$rounds"); do
  engine=$("$after" bench ort models/efficientnet-lite0.onnx --input "$body" --sessions 2 --threads 1 --shared \
    --duration "${secs}s" 2>&1 | awk '$1 == "runs" {for (i = 1; i < NF; i++) {if ($i == "runs/s") r = $(i + 1); if ($i == "ms/run") c = $(i + 1)}} END {printf "%6.1f runs/s %5.2f ms", r, c}')
  echo "round $round  engine alone $engine of CPU a run"
  for fn in "${functions[@]}"; do
    for label in before after; do
      bin=$(eval echo "\$$label")
      printf "  %-14s %-6s %s\n" "$fn" "$label" "$(load "$bin" "$label" "$fn")"
    done
  done
done
