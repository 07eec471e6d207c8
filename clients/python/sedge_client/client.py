"""HTTP access to `/system/tasks`, with the standard library only."""

import base64
import json
import os
import urllib.error
import urllib.request


class SedgeError(Exception):
    """The node refused a request; `status` is its HTTP status."""

    def __init__(self, status, message):
        super().__init__(f"the node answered {status}: {message}")
        self.status = status
        self.message = message


class TaskPending(Exception):
    """The task has not finished yet (funcX raises the same from get_result)."""

    def __init__(self, task_id, status):
        super().__init__(f"task {task_id} is {status}")
        self.task_id = task_id
        self.status = status


class TaskExecutionFailed(Exception):
    """The task's function raised (or the task failed on the node): the
    remote exception's type, message and traceback."""

    def __init__(self, remote_type, message, traceback=None, task_id=None):
        self.remote_type = remote_type
        self.message = message
        self.remote_traceback = traceback
        self.task_id = task_id
        text = f"{remote_type}: {message}"
        if traceback:
            text += "\n\nremote traceback:\n" + traceback
        super().__init__(text)


def outcome(task):
    """The result of a finished task's JSON, or the exception it failed with."""
    exc = task.get("exception")
    if task.get("status") == "failed" or exc:
        exc = exc or {}
        return TaskExecutionFailed(
            exc.get("type") or "TaskFailed",
            exc.get("message") or task.get("error") or "",
            exc.get("traceback"),
            task.get("task_id"),
        )
    if task.get("status") == "unknown":
        return TaskExecutionFailed("TaskNotFound", task.get("error") or "no such task", None, task.get("task_id"))
    return task.get("result")


class Batch:
    """Tasks to submit together (funcX's `create_batch()`)."""

    def __init__(self):
        self.tasks = []

    def add(self, *args, function_id=None, endpoint_id=None, **kwargs):
        # endpoint_id is accepted for funcX's call shape; a node is its own endpoint.
        if not function_id:
            raise ValueError("function_id is the name of a function deployed on the node")
        self.tasks.append({"function": function_id, "args": list(args), "kwargs": kwargs})

    def __len__(self):
        return len(self.tasks)


class Client:
    """One node's task API. `gateway` is the node's URL; the admin password
    comes from `password` or the SEDGE_PASSWORD environment variable."""

    def __init__(self, gateway="http://127.0.0.1:8080", password=None, timeout=30.0):
        self.gateway = gateway.rstrip("/")
        self.timeout = timeout
        password = password if password is not None else os.environ.get("SEDGE_PASSWORD")
        self._auth = None
        if password:
            token = base64.b64encode(f"admin:{password}".encode()).decode()
            self._auth = f"Basic {token}"

    def _request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.gateway + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text
            raise SedgeError(e.code, message) from None

    def submit_tasks(self, tasks):
        """Submits task dicts ({"function", "args", "kwargs"} or {"function",
        "body"}) in one request; returns their ids in order."""
        return self._request("POST", "/system/tasks", list(tasks))["task_ids"]

    def run(self, *args, function_id=None, endpoint_id=None, **kwargs):
        """Submits one task; returns its id (funcX's `Client.run`)."""
        batch = Batch()
        batch.add(*args, function_id=function_id, endpoint_id=endpoint_id, **kwargs)
        return self.batch_run(batch)[0]

    def create_batch(self):
        return Batch()

    def batch_run(self, batch):
        """Submits a `Batch`; returns the task ids in order."""
        return self.submit_tasks(batch.tasks)

    def get_task(self, task_id):
        """The task's JSON: status, pending, and result or exception."""
        return self._request("GET", f"/system/tasks/{task_id}")

    def get_result(self, task_id):
        """The task's result; raises TaskPending while it runs and
        TaskExecutionFailed if it failed."""
        task = self.get_task(task_id)
        if task.get("pending"):
            raise TaskPending(task_id, task.get("status"))
        value = outcome(task)
        if isinstance(value, TaskExecutionFailed):
            raise value
        return value

    def get_batch_status(self, task_ids):
        """Each task's JSON, keyed by id."""
        return self._request("POST", "/system/tasks/batch-status", {"task_ids": list(task_ids)})["results"]

    def get_batch_result(self, task_ids):
        """funcX's shape: {id: {"pending": bool, "status": ..., "result": ...}},
        with "exception" (a TaskExecutionFailed) for a task that failed."""
        out = {}
        for task_id, task in self.get_batch_status(task_ids).items():
            entry = {"pending": bool(task.get("pending")), "status": task.get("status")}
            if not entry["pending"]:
                value = outcome(task)
                if isinstance(value, TaskExecutionFailed):
                    entry["exception"] = value
                else:
                    entry["result"] = value
                entry["completion_t"] = task.get("completion_t")
            out[task_id] = entry
        return out
