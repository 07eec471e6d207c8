"""`Executor`: futures for tasks, as Globus Compute's Executor gives them."""

import concurrent.futures
import queue
import threading
import time

from .client import Client, TaskExecutionFailed, outcome


class Executor(concurrent.futures.Executor):
    """Runs tasks of `function` (a function deployed on the node, funcX
    style) and returns a `concurrent.futures.Future` for each.

    `submit(*args, **kwargs)` calls `function` with those arguments. Code
    written for Globus Compute passes the function first,
    `submit(fn, *args)`: a callable first argument is taken as that and
    dropped (the node runs the deployed function); with no `function`
    given, its `__name__` (with "_" as "-") names the deployed function.

    One background thread sends submissions in batches and polls the
    pending tasks' status in batches every `poll_interval` seconds.
    """

    def __init__(self, gateway="http://127.0.0.1:8080", function=None, password=None, client=None,
                 poll_interval=0.2, batch_size=256, endpoint_id=None):
        self.client = client or Client(gateway, password=password)
        self.function = function
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        # Accepted for Globus Compute's call shape; a node is its own endpoint.
        self.endpoint_id = endpoint_id
        self._outbox = queue.Queue()
        self._pending = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._shutdown = False
        self._thread = threading.Thread(target=self._run, name="sedge-executor", daemon=True)
        self._thread.start()

    def _function_for(self, args):
        if args and callable(args[0]):
            fn, args = args[0], args[1:]
            name = self.function or getattr(fn, "__name__", "").replace("_", "-")
            return name, args
        return self.function, args

    def submit(self, *args, **kwargs):
        name, args = self._function_for(args)
        if not name:
            raise ValueError("no function to run: give Executor(function=NAME) or submit(fn, *args)")
        return self.submit_to_registered_function(name, args, kwargs)

    def submit_to_registered_function(self, function_id, args=None, kwargs=None):
        """Runs the deployed function `function_id` with `args` and `kwargs`."""
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        future = concurrent.futures.Future()
        future.task_id = None
        task = {"function": function_id, "args": list(args or ()), "kwargs": dict(kwargs or {})}
        self._outbox.put((task, future))
        return future

    def _send(self):
        batch = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._outbox.get_nowait())
            except queue.Empty:
                break
        batch = [(t, f) for t, f in batch if f.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            ids = self.client.submit_tasks([t for t, _ in batch])
        except Exception as e:  # the node refused or could not be reached
            for _, f in batch:
                f.set_exception(e)
            return
        with self._lock:
            for task_id, (_, f) in zip(ids, batch):
                f.task_id = task_id
                self._pending[task_id] = f

    def _poll(self):
        with self._lock:
            ids = list(self._pending)
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            try:
                results = self.client.get_batch_status(chunk)
            except Exception:  # a dropped link: the tasks are stored, poll again
                return
            for task_id, task in results.items():
                if task.get("pending"):
                    continue
                with self._lock:
                    future = self._pending.pop(task_id, None)
                if future is None:
                    continue
                value = outcome(task)
                if isinstance(value, TaskExecutionFailed):
                    future.set_exception(value)
                else:
                    future.set_result(value)

    def _run(self):
        while True:
            self._send()
            if not self._outbox.empty():
                continue
            self._poll()
            with self._lock:
                idle = not self._pending
            if self._stopping.is_set() and idle and self._outbox.empty():
                return
            time.sleep(self.poll_interval)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    _, f = self._outbox.get_nowait()
                except queue.Empty:
                    break
                f.cancel()
        self._stopping.set()
        if wait:
            self._thread.join()

    def get_result(self, task_id):
        return self.client.get_result(task_id)

    def get_batch_result(self, task_ids):
        return self.client.get_batch_result(task_ids)
