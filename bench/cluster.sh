#!/usr/bin/env bash
# The cluster's figures (docs/cluster.md), on one machine over loopback: a
# nats-server with JetStream on a free port and three nodes (a, b, c).
#
#   bench/cluster.sh [SEDGE_BINARY] [SECONDS]   # default target/release/sedge, 10
#
# 1. Added latency of a forwarded call: a function placed only on b (label
#    `w1`), one user calling b itself (local) then a (which forwards to b),
#    for hello (no body) and a 600 KB body; p50/p99 of each and the difference.
# 2. One node forwarding to two: a function on b and c (label `w`), 16 users
#    on a (which runs none of it), against 16 users on b alone.
# 3. Deploy → running on every node: `sedge deploy --wait` of a new version
#    of a function placed on all three, five times.
# 4. The node's own memory (RSS, workers excluded) idle with one function and
#    no load served: a node that joined the cluster against one on its own.
# 5. A cluster-wide listing: GET /system/functions by 1 user on node a,
#    which asks all four nodes (docs/cluster.md), against the same three
#    functions listed by the node on its own.
# 6. Asynchronous calls: accepted /async-function calls per second, 16 users,
#    on a (the call goes to JetStream, b runs it) against the node on its own
#    (SQLite, synced); and 202 -> callback latency at light load through a.
#    (Run after 4, so the memory figure is of an idle node.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sedge}
secs=${2:-10}
# shellcheck source=bench/cluster-common.sh
source bench/cluster-common.sh
start a "${cluster[@]}" --node-name a --labels front
start b "${cluster[@]}" --node-name b --labels w,w1
start c "${cluster[@]}" --node-name c --labels w
export SEDGE_GATEWAY=$url_a

# fn NAME LABELS [scale]: a Python function answering the body's length.
fn() {
  mkdir -p "$work/$1"
  cat > "$work/$1/sedge.toml" <<TOML
name = "$1"
runtime = "python"
handler = "handler.handle"
[limits]
max_body = "2MiB"
[scale]
min = 2
max = 2
concurrency = 4
[placement]
labels = [$2]
TOML
  printf 'def handle(req):\n    return str(len(req.body))\n' > "$work/$1/handler.py"
}
fn one '"w1"'
fn two '"w"'
"$bin" deploy --wait "$work/one" > /dev/null 2>&1
"$bin" deploy --wait "$work/two" > /dev/null 2>&1
head -c 614400 /dev/urandom > "$work/600k.bin"

echo "== forwarded vs local, 1 user, ${secs}s each"
for body in hello 600k; do
  data=()
  [ "$body" = 600k ] && data=(-d "@$work/600k.bin" -H content-type:application/octet-stream)
  read -r lp50 lp99 lrps < <(load "$url_b/function/one" 1 "${data[@]}")
  read -r fp50 fp99 frps < <(load "$url_a/function/one" 1 "${data[@]}")
  echo "$body: local p50 $lp50 ms, p99 $lp99 ms ($lrps req/s); forwarded p50 $fp50 ms, p99 $fp99 ms ($frps req/s)"
done

echo "== one node forwarding to two, 16 users"
read -r p50 p99 rps < <(load "$url_b/function/two" 16)
echo "b alone, local: $rps req/s (p50 $p50 ms, p99 $p99 ms)"
read -r p50 p99 rps < <(load "$url_a/function/two" 16)
echo "a forwarding to b and c: $rps req/s (p50 $p50 ms, p99 $p99 ms)"

echo "== deploy -> running on every node (3 nodes), 5 versions"
mkdir -p "$work/all"
printf 'name = "everywhere"\nruntime = "python"\nhandler = "handler.handle"\n' > "$work/all/sedge.toml"
for i in 1 2 3 4 5; do
  printf 'def handle(req):\n    return "v%s"\n' "$i" > "$work/all/handler.py"
  t0=$(date +%s.%N)
  "$bin" deploy --wait "$work/all" > /dev/null 2>&1
  t1=$(date +%s.%N)
  for u in "$url_a" "$url_b" "$url_c"; do
    [ "$(curl -s "$u/function/everywhere")" = "v$i" ] || { echo "v$i not served at $u" >&2; exit 1; }
  done
  echo "version $i: $(echo "($t1 - $t0) * 1000" | bc -l | xargs printf '%.0f') ms"
done

echo "== node memory (RSS, workers excluded), idle, one function, no load served"
rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
start d "${cluster[@]}" --node-name d
start solo
SEDGE_GATEWAY=$url_solo "$bin" deploy --wait "$work/all" > /dev/null 2>&1
for _ in $(seq 100); do [ "$(curl -s "$url_d/function/everywhere")" = v5 ] && break; sleep 0.1; done
curl -s "$url_solo/function/everywhere" > /dev/null
sleep 5
echo "node d in the cluster: $(rss "$pid_d") MiB; the same node on its own: $(rss "$pid_solo") MiB"

echo "== GET /system/functions, 1 user, 3 functions: a node of 4 asking each, and a node on its own"
SEDGE_GATEWAY=$url_solo "$bin" deploy --wait "$work/one" > /dev/null 2>&1
SEDGE_GATEWAY=$url_solo "$bin" deploy --wait "$work/two" > /dev/null 2>&1
auth="authorization:Basic $(printf 'admin:%s' "$password" | base64 -w0)"
read -r p50 p99 rps < <(load "$url_solo/system/functions" 1 -H "$auth" --expect everywhere)
echo "on its own: p50 $p50 ms, p99 $p99 ms ($rps req/s, $(ok) % ok)"
read -r p50 p99 rps < <(load "$url_a/system/functions" 1 -H "$auth" --expect '"answered":true')
echo "node a asking a, b, c, d: p50 $p50 ms, p99 $p99 ms ($rps req/s, $(ok) % ok)"

echo "== 202 -> callback through a (the call runs on b), 200 calls at 20/s"
SEDGE_PASSWORD=$password python3 bench/async-calls.py latency "$url_a" one 200 20
echo "== asynchronous calls: accepted per second, 16 users, ${secs}s; 256-byte bodies"
head -c 256 /dev/zero | tr '\0' 'x' > "$work/body"
read -r p50 p99 rps < <(load "$url_a/async-function/one" 16 -d "@$work/body")
echo "a, into the cluster (JetStream; b runs them): $rps calls/s (p50 $p50 ms, p99 $p99 ms)"
read -r p50 p99 rps < <(load "$url_solo/async-function/everywhere" 16 -d "@$work/body")
echo "the node on its own (SQLite, synced): $rps calls/s (p50 $p50 ms, p99 $p99 ms)"
