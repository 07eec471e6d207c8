"""Drives a node with the repository's Python client (clients/python,
installed into the venv by scripts/setup.sh): argv is the node's URL, the
admin password and a digit sample (examples/functions/digits-python). Exits
non-zero, with the failed check, on any mismatch."""

import concurrent.futures
import json
import sys
import time

from sedge_client import Client, Executor, SedgeError, TaskExecutionFailed, TaskPending

gateway, password, sample = sys.argv[1], sys.argv[2], sys.argv[3]


def add(a, b=0):
    """Stands for the function a Globus Compute driver would pass; the node runs its own."""
    return a + b


with Executor(gateway, function="adder", password=password) as ex:
    assert isinstance(ex, concurrent.futures.Executor)
    one = ex.submit(1, b=2)
    assert isinstance(one, concurrent.futures.Future)
    assert one.result(timeout=60) == 3, one.result()
    assert one.task_id, "the future knows its task id"
    # Globus Compute's shape: the function first.
    assert ex.submit(add, 2, 3).result(timeout=60) == 5
    many = [ex.submit(i, b=i) for i in range(50)]
    assert [f.result(timeout=120) for f in many] == [2 * i for i in range(50)]
    bad = ex.submit(-4)
    try:
        bad.result(timeout=60)
        raise AssertionError("a raising task must fail its future")
    except TaskExecutionFailed as e:
        assert e.remote_type == "ValueError", e.remote_type
        assert e.message == "negative: -4", e.message
        assert "raise ValueError" in e.remote_traceback, e.remote_traceback
    missing = ex.submit_to_registered_function("absent", [1])
    try:
        missing.result(timeout=60)
        raise AssertionError("an unknown function must fail its future")
    except SedgeError as e:
        assert e.status == 404 and "absent" in e.message, e

def classify_digit(pixels):
    """The funcx-python example's function, as a Globus Compute driver holds it."""


# docs/migrating.md's "after": only the import and the constructor changed.
pixels = json.load(open(sample))["pixels"]
with Executor(gateway, function="funcx-python", password=password) as gce:
    futures = [gce.submit(classify_digit, pixels) for _ in range(3)]
    assert [f.result(timeout=120)["digit"] for f in futures] == [2, 2, 2]

client = Client(gateway, password=password)
task_id = client.run(5, b=6, function_id="adder", endpoint_id="ignored")
deadline = time.time() + 60
while True:
    try:
        assert client.get_result(task_id) == 11
        break
    except TaskPending:
        assert time.time() < deadline, "task never finished"
        time.sleep(0.1)
batch = client.create_batch()
batch.add(1, function_id="adder")
batch.add(-1, function_id="adder")
ids = client.batch_run(batch)
assert len(ids) == 2
while True:
    results = client.get_batch_result(ids)
    if not any(r["pending"] for r in results.values()):
        break
    assert time.time() < deadline, "batch never finished"
    time.sleep(0.1)
assert results[ids[0]]["result"] == 1 and results[ids[0]]["status"] == "success", results
assert isinstance(results[ids[1]]["exception"], TaskExecutionFailed), results
try:
    Client(gateway, password="wrong").run(1, function_id="adder")
    raise AssertionError("a wrong password must be refused")
except SedgeError as e:
    assert e.status == 401, e
print("ok")
