"""The dashboard's actions: retry one task, requeue dead letters (one or all), purge a queue.

Retry of a `dead` task sends its own dead letter back (`Client.requeue_dead(ids=...)`, the path of
`taskq requeue-dead`), so the letter does not linger to be requeued twice; a `failed` task (acked,
no letter) or a dead one whose letter is gone is rebuilt from its document as a first attempt,
recorded like a submission (outbox entry, then `queued`: `TaskStore.retry_finished`) and published
with confirms. Each action returns a short outcome code the page shows as a notice.
"""

from __future__ import annotations

from taskq.broker.publisher import Outgoing
from taskq.client import Client
from taskq.core.message import utcnow
from taskq.core.states import TaskState
from taskq.errors import QueueNotFound

DEAD_SCAN_LIMIT = 1000  # dead letters looked through for one task's letter

NOTICES = {
    "requeued": "The task's dead letter was sent back to its queue.",
    "retried": "The task was queued again as a first attempt.",
    "not-retryable": "Only failed or dead tasks can be retried; this one was left as it is.",
    "not-found": "No such task.",
    "requeued-all": "Dead letters were sent back to their queue.",
    "purged": "The queue's messages, dead letters and task documents were removed.",
    "no-queue": "No such queue on the broker.",
}


def retry(client: Client, task_id: str) -> str:
    """Queue a failed or dead task again; the outcome code (see `NOTICES`)."""
    document = client.store.get(task_id)
    if document is None:
        return "not-found"
    state = document.get("state")
    queue = str(document.get("queue") or client.settings.queue)
    if state == TaskState.DEAD.value and task_id in client.requeue_dead(queue, limit=DEAD_SCAN_LIMIT, ids={task_id}).requeued:
        return "requeued"
    if state not in (TaskState.FAILED.value, TaskState.DEAD.value):
        return "not-retryable"
    message = client.message(
        str(document["name"]),
        document.get("args") or [],
        document.get("kwargs") or {},
        queue=queue,
        priority=int(document.get("priority") or 0),
        task_id=task_id,
        max_retries=document.get("max_retries"),
        timeout=document.get("timeout"),
    )
    if not client.store.retry_finished(message, utcnow()):
        return "not-retryable"
    client._ensure_queue(queue)
    stream = client._publisher.stream()
    stream.add([Outgoing(message.queue, message.encode(), message.id, message.priority)])
    stream.wait()
    client.store.mark_published(stream.take_confirmed())
    return "retried"


def requeue_all(client: Client, queue: str) -> tuple[str, int]:
    """Send every dead letter of `queue` back (as `taskq requeue-dead` does); the code and how many went."""
    report = client.requeue_dead(queue)
    return "requeued-all", len(report.requeued)


def purge(client: Client, queue: str) -> str:
    """Drop the queue's ready messages, its dead letters and its task documents (as `taskq purge --yes` does)."""
    try:
        client.purge(queue)
    except QueueNotFound:
        return "no-queue"
    return "purged"
