"""A client for a sedge node's task API, shaped like Globus Compute's (funcX).

- `Client`: submit tasks (`run`, `batch_run`), read them back (`get_task`,
  `get_result`, `get_batch_result`).
- `Executor`: a `concurrent.futures.Executor` whose `submit` returns a
  `Future`; submissions are sent in batches and results polled in batches
  by one background thread.
"""

from .client import Batch, Client, SedgeError, TaskExecutionFailed, TaskPending
from .executor import Executor

__all__ = ["Batch", "Client", "Executor", "SedgeError", "TaskExecutionFailed", "TaskPending"]
