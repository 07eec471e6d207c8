# Shared by the cluster benchmarks (sourced, with `bin` and `secs` set): a
# nats-server with JetStream on a free port, stopped with every node at
# exit, and helpers to start nodes and load them.

nats=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$nats" ] || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
export SEDGE_PYTHON=${SEDGE_PYTHON:-$PWD/.venv/bin/python}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port=$(free_port)
"$nats" -js -a 127.0.0.1 -p "$port" -sd "$work/nats" > "$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
password="bench-$$"
export SEDGE_ADMIN_PASSWORD=$password SEDGE_PASSWORD=$password
cluster=(--cluster "nats://127.0.0.1:$port")

# start NAME [serve flags...]: a node; sets url_NAME and pid_NAME.
start() {
  local name=$1
  shift
  "$bin" serve --listen 127.0.0.1:0 --data "$work/data-$name" "$@" > "$work/$name.out" 2> "$work/$name.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 200); do grep -q "listening on" "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  local url
  url=$(sed -n 's/^sedge listening on //p' "$work/$name.out")
  [ -n "$url" ] || { echo "node $name did not start:" >&2; cat "$work/$name.err" >&2; exit 1; }
  printf -v "url_$name" '%s' "$url"
  printf -v "pid_$name" '%s' "$pid"
}

# load URL USERS [extra bench flags...] → "p50 p99 req/s"
load() {
  local url=$1 users=$2
  shift 2
  "$bin" bench load "$url" -c "$users" --duration "${secs}s" "$@" > "$work/load" 2>&1
  awk '$1 == "p50" {p50=$2} $1 == "p99" {p99=$2} $1 == "throughput" {t=$2} END {print p50, p99, t}' "$work/load"
}

# ok → the share of the last load's requests answered 2xx (%).
ok() { awk '$1 == "success" && $2 == "rate" {print $3}' "$work/load"; }
