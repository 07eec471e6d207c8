"""Cold starts on a running node, measured from outside: scale a function
to zero (`/system/scale-function`, replicas 0), then time one request to its
answer, TRIES times; and, for ML functions, the start of a second worker
beside a warm one. Prints p50/p90 and where the node says each start went
(describe's lastColdStart: process, imports, model, first answer).

    python3 bench/coldstart.py URL NAME:BODYFILE:CONTENT_TYPE [...]  (see bench/coldstart.sh)

A second worker is measured for names marked with a trailing `+`.
Environment: SEDGE_PASSWORD (admin), TRIES (default 15).
"""

import base64
import json
import os
import statistics
import sys
import threading
import time
import urllib.request

URL = sys.argv[1].rstrip("/")
AUTH = "Basic " + base64.b64encode(f"admin:{os.environ.get('SEDGE_PASSWORD', '')}".encode()).decode()
TRIES = int(os.environ.get("TRIES", "15"))


def request(method, path, body=None, content_type="application/json", admin=False):
    req = urllib.request.Request(URL + path, data=body, method=method)
    req.add_header("content-type", content_type)
    if admin:
        req.add_header("authorization", AUTH)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read()


def describe(name):
    return json.loads(request("GET", f"/system/function/{name}", admin=True)[1])


def scale(name, replicas):
    body = json.dumps({"serviceName": name, "replicas": replicas}).encode()
    request("POST", f"/system/scale-function/{name}", body, admin=True)


def wait_for(what, check, limit=60.0):
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def phases_line(starts):
    keys = ["processMs", "importsMs", "modelMs", "firstAnswerMs", "totalMs"]
    medians = {k: statistics.median(s[k] for s in starts) for k in keys}
    kinds = sorted({s["kind"] for s in starts})
    return ("phases p50 (ms): process %.1f, imports %.1f, model %.1f, first answer %.1f, total %.1f; kinds %s"
            % (*(medians[k] for k in keys), "/".join(kinds)))


def from_zero(name, body, content_type):
    status, _ = request("POST", f"/function/{name}", body, content_type)
    assert status == 200
    time.sleep(3)  # the zygote (python) or spare (node) is up by then
    took, starts = [], []
    for _ in range(TRIES):
        scale(name, 0)
        wait_for("zero workers", lambda: describe(name)["availableReplicas"] == 0)
        time.sleep(float(os.environ.get("GAP", "0.5")))  # a replacement spare starts when one is taken; the old worker ends
        began = time.perf_counter()
        status, _ = request("POST", f"/function/{name}", body, content_type)
        took.append((time.perf_counter() - began) * 1000)
        assert status == 200, status
        starts.append(describe(name)["sedge"]["lastColdStart"])
    print(f"{name}: scale from zero to first answer, {TRIES} tries: p50 {pct(took, 50):.1f} ms, "
          f"p90 {pct(took, 90):.1f} ms, min {min(took):.1f} ms")
    print(f"  {phases_line(starts)}")


def second_worker(name, body, content_type):
    scale(name, 1)
    wait_for("one worker", lambda: describe(name)["availableReplicas"] == 1)
    request("POST", f"/function/{name}", body, content_type)
    starts, warm = [], []
    for _ in range(TRIES):
        before = describe(name)["sedge"]["lastColdStart"]
        scale(name, 2)
        wait_for("two workers", lambda: describe(name)["availableReplicas"] == 2)
        # Calls until the new worker has answered once (and reported its start).
        def current():
            return describe(name)["sedge"]["lastColdStart"]
        while current() == before:
            took = []

            def timed():
                began = time.perf_counter()
                request("POST", f"/function/{name}", body, content_type)
                took.append((time.perf_counter() - began) * 1000)
            calls = [threading.Thread(target=timed) for _ in range(2)]
            for c in calls:
                c.start()
            for c in calls:
                c.join()
        # The quicker of the pair is (almost always) the warm worker's: the
        # same call beside it, on the same cores, as the new worker's yardstick.
        warm.append(min(took))
        starts.append(current())
        scale(name, 1)
        wait_for("one worker", lambda: describe(name)["availableReplicas"] == 1)
    ready = [s["processMs"] + s["importsMs"] + s["modelMs"] for s in starts]
    print(f"{name}: a second worker beside a warm one, {TRIES} tries: start to ready p50 {pct(ready, 50):.1f} ms, "
          f"p90 {pct(ready, 90):.1f} ms; with its first answer p50 {pct([s['totalMs'] for s in starts], 50):.1f} ms; "
          f"the warm worker's call beside it (client side) p50 {pct(warm, 50):.1f} ms")
    print(f"  {phases_line(starts)}")
    scale(name, 0)


for spec in sys.argv[2:]:
    name, body_file, content_type = spec.split(":", 2)
    also_second = name.endswith("+")
    name = name.rstrip("+")
    body = open(body_file, "rb").read() if body_file else b""
    from_zero(name, body, content_type)
    if also_second:
        second_worker(name, body, content_type)
