"""The outbox sweeper: send again the tasks whose publish the broker never confirmed.

A producer writes an outbox entry before each task's `queued` document and deletes it after the
broker's confirm (`taskq.client`); an entry that stays behind means the producer died in between, or
the broker or the store failed mid-batch. One sweep takes at most `limit` entries older than
`grace_s` (oldest first) and, per entry, by the task's state:

- `queued`: published again with the body first recorded, then the entry is deleted. If the first
  publish did reach the queue after all, the task is delivered twice; the worker acks a delivery of
  a task that is already final without running it, so only a task still running when the copy is
  delivered can run twice (at-least-once).
- any other state: the message was delivered (a worker wrote the state), the entry is deleted.
- no document: the submission failed before its document was written (it was never accepted), the
  entry is deleted.

Cost: the selection is not a query by `_id`. MongoDB serves it from the outbox's `created_at` index;
FerretDB 1.x scans the whole outbox collection, which holds only the unconfirmed publishes of the
moment plus what was left behind, then reads each task's state by `_id` (one query per entry). Run
it every ~30 s per store, not every scaling tick. Called by `taskq.Client.sweep` (`taskq sweep`) and
by the operator (`taskq_operator.sweep`), which must not import the client.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from taskq.broker.delayed import DeclareDelay, eta_of, route
from taskq.broker.publisher import ConfirmingPublisher, Outgoing
from taskq.core.document import Unpublished
from taskq.core.message import utcnow
from taskq.core.states import TaskState
from taskq.errors import BrokerRejected, TaskqError
from taskq.store.mongo import TaskStore

DEFAULT_GRACE_S = 60.0
DEFAULT_LIMIT = 500
log = logging.getLogger("taskq.sweeper")


class Action(enum.Enum):
    """What a sweep does with one outbox entry."""

    PUBLISH = "publish"
    DROP = "drop"


def action_for(state: TaskState | None) -> Action:
    """Publish again only what is still `queued` or `scheduled`; any other state, or no document, needs no message."""
    return Action.PUBLISH if state in (TaskState.QUEUED, TaskState.SCHEDULED) else Action.DROP


def _no_delay(queue: str, bucket_ms: int) -> None:
    raise AssertionError(f"no delay queue for {queue!r} ({bucket_ms} ms): delayed entries were left out")


@dataclass(frozen=True)
class SweepReport:
    """One sweep: the ids published again (confirmed), and the entries dropped as not needing a message."""

    republished: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    republished_by_queue: dict[str, int] = field(default_factory=dict)


def publish_recorded(
    store: TaskStore, publisher: ConfirmingPublisher, entries: Sequence[Unpublished], declare_delay: DeclareDelay | None = None
) -> list[str]:
    """Publish recorded tasks again (their first body) with confirms; the confirmed lose their outbox entry.

    Returns the confirmed ids; raises `BrokerUnavailable`/`BrokerRejected` when the broker failed
    or refused some (what was confirmed before is still recorded). The queues must exist. A task not
    due yet (an `eta`) goes to its delay queue through `declare_delay`; without one it is left for later.
    """
    items = [(Outgoing(e.queue, e.body, e.task_id, e.priority, republished=True), eta_of(e.body)) for e in entries]
    now = utcnow()
    if declare_delay is None:
        items = [(o, eta) for o, eta in items if eta is None or eta <= now]
    if not items:
        return []
    stream = publisher.stream()
    confirmed: list[str] = []
    try:
        stream.add(route(items, now, declare_delay or _no_delay))
        stream.wait()
    finally:
        try:
            taken = stream.take_confirmed()
            if taken:
                store.mark_published(taken)
                confirmed.extend(taken)
        except TaskqError as exc:  # the store failed too: the entries stay, the next sweep sends them again
            log.warning("republished tasks not recorded as published: %s", exc)
    return confirmed


def sweep(
    store: TaskStore,
    publisher: ConfirmingPublisher,
    declare: Callable[[str], None],
    *,
    grace_s: float = DEFAULT_GRACE_S,
    limit: int = DEFAULT_LIMIT,
    queues: set[str] | None = None,
    now: datetime | None = None,
    declare_delay: DeclareDelay | None = None,
) -> SweepReport:
    """One bounded sweep of `store`, publishing through `publisher` after `declare(queue)` for each queue.

    With `queues`, entries of other queues are left alone (the operator sweeps only the queues of
    its TaskQueues). Raises `taskq.errors` when the store or the broker fails; what was confirmed
    before that stays recorded.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=grace_s)
    publish: list[Unpublished] = []
    dropped: list[str] = []
    for entry, state in store.unpublished_before(cutoff, limit):
        if queues is not None and entry.queue not in queues:
            continue
        if action_for(state) is Action.PUBLISH:
            publish.append(entry)
        else:
            dropped.append(entry.task_id)
    if dropped:
        store.mark_published(dropped)
    for queue in sorted({e.queue for e in publish}):
        declare(queue)
    try:
        republished = publish_recorded(store, publisher, publish, declare_delay)
    except BrokerRejected:
        log.warning("the broker refused some republished tasks; they stay in the outbox")
        raise
    if republished:
        log.warning("republished %d task(s) whose publish was never confirmed, e.g. %s", len(republished), republished[0])
    sent = set(republished)
    by_queue: dict[str, int] = {}
    for entry in publish:
        if entry.task_id in sent:
            by_queue[entry.queue] = by_queue.get(entry.queue, 0) + 1
    return SweepReport(republished=republished, dropped=dropped, republished_by_queue=by_queue)
