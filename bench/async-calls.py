"""Figures for asynchronous calls (bench/async.sh runs it; standard library only).

  latency URL FUNCTION N RATE    N calls at RATE per second, each with a callback to a
                                 local receiver: the time from the 202 to the callback
  recover BIN FOLDER N           a node of its own: N calls queued to FOLDER's function,
                                 kill -9, restart on the same data directory: the time
                                 to listen again and until every accepted call's callback
"""

import http.server
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


class Receiver:
    """Records the arrival time and body of every callback, by call id."""

    def __init__(self):
        got = self.got = {}
        lock = self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    got.setdefault(self.headers.get("x-call-id"), []).append((time.monotonic(), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, ids):
        with self.lock:
            return sum(1 for i in ids if i in self.got)

    def wait_all(self, ids, limit):
        end = time.monotonic() + limit
        while self.count(ids) < len(ids):
            if time.monotonic() > end:
                raise SystemExit(f"only {self.count(ids)} of {len(ids)} callbacks within {limit} s")
            time.sleep(0.01)


def submit(url, function, body, callback):
    req = urllib.request.Request(f"{url}/async-function/{function}", data=body, method="POST")
    req.add_header("X-Callback-Url", callback)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.headers["X-Call-Id"] if resp.status == 202 else None
    except OSError:
        return None


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def latency(url, function, n, rate):
    rx = Receiver()
    sent = {}
    for i in range(n):
        due = time.monotonic()
        call_id = submit(url, function, f"call-{i}".encode(), rx.url)
        if call_id is None:
            raise SystemExit(f"call {i} was not accepted")
        sent[call_id] = time.monotonic()
        time.sleep(max(0.0, due + 1.0 / rate - time.monotonic()))
    rx.wait_all(list(sent), 120)
    ms = [(rx.got[i][0][0] - t) * 1000 for i, t in sent.items()]
    print(f"202 -> callback, {n} calls at {rate}/s: p50 {pct(ms, 50):.1f} ms, p90 {pct(ms, 90):.1f} ms, "
          f"p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms, mean {statistics.mean(ms):.1f} ms")
    # Where the time went, from the node's own record (millisecond timestamps).
    req = urllib.request.Request(f"{url}/system/calls?function={function}&limit={n}")
    token = os.environ.get("SEDGE_PASSWORD", "")
    req.add_header("Authorization", "Basic " + __import__("base64").b64encode(f"admin:{token}".encode()).decode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        calls = [c for c in json.load(resp) if c["id"] in sent]

    def at(text):
        return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + text[19:-1])

    waited = [(at(c["started_at"]) - at(c["accepted_at"])) * 1000 for c in calls]
    ran = [(at(c["finished_at"]) - at(c["started_at"])) * 1000 for c in calls]
    print(f"  of which, by the node's clock: accepted -> started p50 {pct(waited, 50):.0f} ms, "
          f"started -> finished p50 {pct(ran, 50):.0f} ms")
    sync = []
    for i in range(n):
        t = time.monotonic()
        with urllib.request.urlopen(urllib.request.Request(f"{url}/function/{function}", data=b"x"), timeout=10):
            pass
        sync.append((time.monotonic() - t) * 1000)
        time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t)))
    print(f"the same function called synchronously, {n} calls at {rate}/s: p50 {pct(sync, 50):.1f} ms, "
          f"p99 {pct(sync, 99):.1f} ms")


def start_node(bin_path, data, env):
    proc = subprocess.Popen([bin_path, "serve", "--listen", "127.0.0.1:0", "--data", data],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    line = proc.stdout.readline()
    if not line.startswith("sedge listening on "):
        raise SystemExit(f"the node did not start: {line!r}")
    return proc, line.strip().removeprefix("sedge listening on ")


def recover(bin_path, folder, n):
    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    env = dict(os.environ, SEDGE_ADMIN_PASSWORD="bench-async", SEDGE_PASSWORD="bench-async", SEDGE_LOG="warn")
    proc, url = start_node(bin_path, data, env)
    subprocess.run([bin_path, "deploy", "--wait", folder], env=dict(env, SEDGE_GATEWAY=url), check=True,
                   stdout=subprocess.DEVNULL)
    function = os.path.basename(folder.rstrip("/"))
    rx = Receiver()
    ids = []
    lock = threading.Lock()

    def worker(k):
        for i in range(k, n, 8):
            call_id = submit(url, function, f"call-{i}".encode(), rx.url)
            if call_id:
                with lock:
                    ids.append(call_id)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accept_s = time.monotonic() - t0
    proc.kill()
    proc.wait()
    delivered = rx.count(ids)
    db = sqlite3.connect(os.path.join(data, "calls.db"))
    states = dict(db.execute("SELECT state, COUNT(*) FROM calls GROUP BY state").fetchall())
    db.close()
    print(f"accepted {len(ids)} calls in {accept_s:.2f} s; at the kill -9: {delivered} callbacks delivered, "
          f"stored states {states}")
    t_restart = time.monotonic()
    proc, url = start_node(bin_path, data, env)
    t_listen = time.monotonic()
    pending = [i for i in ids if i not in rx.got]
    first = None
    while rx.count(ids) < len(ids):
        if first is None and any(i in rx.got for i in pending):
            first = time.monotonic()
        if time.monotonic() - t_restart > 600:
            raise SystemExit("not every call arrived within 10 minutes of the restart")
        time.sleep(0.005)
    t_all = time.monotonic()
    first = first or t_all
    dupes = sum(len(v) - 1 for v in rx.got.values())
    wrong = [i for i in ids if not rx.got[i][-1][1].startswith(b"CALL-") and not rx.got[i][-1][1].startswith(b"call-")]
    proc.kill()
    proc.wait()
    print(f"restart to listening: {(t_listen - t_restart) * 1000:.0f} ms; to the first queued call's callback: "
          f"{(first - t_restart) * 1000:.0f} ms; to all {len(pending)} remaining callbacks: "
          f"{(t_all - t_restart):.2f} s; duplicate callbacks: {dupes}; wrong bodies: {len(wrong)}")


def main(argv):
    if len(argv) == 5 and argv[0] == "latency":
        latency(argv[1], argv[2], int(argv[3]), float(argv[4]))
    elif len(argv) == 4 and argv[0] == "recover":
        recover(argv[1], argv[2], int(argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
