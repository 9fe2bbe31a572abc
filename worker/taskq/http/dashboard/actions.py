"""The dashboard's actions, each through `taskq.Client`: retry or cancel one task, requeue dead letters, purge a queue.

Retry is `Client.retry` (a dead task's own dead letter is sent back when it is still there, else
the task is rebuilt from its document as a first attempt), cancel is `Client.cancel`, requeue-all
`Client.requeue_dead` and purge `Client.purge`: the paths of `taskq retry`, `taskq cancel`,
`taskq requeue-dead` and `taskq purge --yes`. Each returns a short outcome code that the page
shows as a notice (`NOTICES`).
"""

from __future__ import annotations

from taskq.client import Client
from taskq.errors import QueueNotFound, TaskNotFound, TaskStateConflict

NOTICES = {
    "requeued": "The task's dead letter was sent back to its queue.",
    "retried": "The task was queued again as a first attempt.",
    "not-retryable": "Only failed or dead tasks can be retried; this one was left as it is.",
    "cancelled": "The task was cancelled.",
    "not-cancellable": "The task had already finished; nothing was cancelled.",
    "not-found": "No such task.",
    "requeued-all": "Dead letters were sent back to their queue.",
    "purged": "The queue's messages (delayed ones too), dead letters and task documents were removed.",
    "no-queue": "No such queue on the broker.",
}


def retry(client: Client, task_id: str) -> str:
    """Run a failed or dead task again; the outcome code."""
    try:
        return client.retry(task_id)
    except TaskNotFound:
        return "not-found"
    except TaskStateConflict:
        return "not-retryable"


def cancel(client: Client, task_id: str) -> str:
    """Cancel a task that is not final; the outcome code."""
    try:
        result = client.cancel(task_id, reason="cancelled from the dashboard")
    except TaskNotFound:
        return "not-found"
    return "cancelled" if result.cancelled else "not-cancellable"


def requeue_all(client: Client, queue: str) -> tuple[str, int]:
    """Send every dead letter of `queue` back (as `taskq requeue-dead` does); the code and how many went."""
    report = client.requeue_dead(queue)
    return "requeued-all", len(report.requeued)


def purge(client: Client, queue: str) -> str:
    """Drop the queue's ready and delayed messages, its dead letters and its task documents (as `taskq purge --yes` does)."""
    try:
        client.purge(queue)
    except QueueNotFound:
        return "no-queue"
    return "purged"
