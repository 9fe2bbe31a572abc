"""taskq: distributed tasks on RabbitMQ with status in MongoDB.

Public API::

    import taskq

    @taskq.task(name="resize")          # in a module the worker imports (TASKQ_TASK_MODULES)
    def resize(path: str, width: int) -> dict: ...

    client = taskq.Client.from_env()    # TASKQ_AMQP_URL, TASKQ_MONGODB_URI, ...
    task_id = client.submit("resize", args=["a.png", 200])
    client.status(task_id)["state"]     # queued, running, succeeded, failed, retrying, dead

Inside a task: `taskq.current()` (id, name, attempt, queue, deadline), `taskq.report_progress(0.5)`,
`raise taskq.Reject(...)` (fail, never retry); the time limit raises `taskq.SoftTimeLimitExceeded`
(a `taskq.TaskTimeout`) in the process pool.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "Reject", "SoftTimeLimitExceeded", "TaskState", "TaskTimeout", "current", "report_progress", "task"]

_CONTEXT_NAMES = {"Reject", "SoftTimeLimitExceeded", "TaskTimeout", "current", "report_progress"}


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import taskq` stays cheap and the pure core stays importable alone.
    if name == "Client":
        from taskq.client import Client

        return Client
    if name == "task":
        from taskq.registry import task

        return task
    if name in _CONTEXT_NAMES:
        import taskq.context

        return getattr(taskq.context, name)
    if name == "TaskState":
        from taskq.core.states import TaskState

        return TaskState
    raise AttributeError(f"module 'taskq' has no attribute {name!r}")
