"""The stuck-task sweep: find `running`/`retrying` tasks whose message is gone, publish them again or give them up.

One bounded pass over one store for the queues given: the open tasks last written before the
policy's cutoff (oldest first, at most `limit`), judged by `taskq.core.stuck.stuck_verdict` against
the workers alive now (heartbeats). A task to recover is marked in its document first (`recoveries`,
`recovered_at`, `recovery_reason`, guarded on what the sweep read, so a task a worker wrote
meanwhile is left alone), then its message is published with a confirm. A task given up is buried
through its attempt's outcome claim (`dead`, error type `Lost`) after its message is dead-lettered
with the reason, where `taskq dead` and `requeue-dead` find it.

Cost: the selection is not a query by `_id`; FerretDB scans the tasks collection for it, so the
operator runs this sweep every few minutes per store (`taskq_operator.sweep`), not every tick.
Called by the operator's sweeper, which must not import the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from taskq.broker.publisher import ConfirmingPublisher, Outgoing
from taskq.core.message import TaskMessage, utcnow
from taskq.core.stuck import STUCK_STATES, Lost, Recover, StuckPolicy, stuck_verdict
from taskq.core.transitions import bury
from taskq.store.mongo import TaskStore

LIVE_HEARTBEAT_S = 30.0
"""A worker whose last heartbeat is older than this is taken for gone (heartbeats come every 2 s)."""
SWEEPER_ID = "taskq-stuck-sweep"
log = logging.getLogger("taskq.recovery")


@dataclass(frozen=True)
class RecoveryReport:
    """One stuck sweep: ids published again (confirmed) and ids given up as lost, with the reasons."""

    recovered: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    queues: dict[str, str] = field(default_factory=dict)


def recover_stuck(
    store: TaskStore,
    publisher: ConfirmingPublisher,
    declare: Callable[[str], None],
    dead_letter: Callable[[TaskMessage, str], None],
    *,
    queues: Sequence[str],
    policy: StuckPolicy,
    limit: int = 200,
    now: datetime | None = None,
) -> RecoveryReport:
    """One stuck sweep of `store` over `queues`; raises `taskq.errors` when the store or the broker fails.

    `declare(queue)` declares a queue as its workers do before a publish; `dead_letter(message,
    reason)` puts a given-up task's message into its dead-letter queue.
    """
    if not queues:
        return RecoveryReport()
    at = now or utcnow()
    live = {str(w["_id"]) for w in store.live_workers(queues, at - timedelta(seconds=LIVE_HEARTBEAT_S))}
    recover: list[Recover] = []
    lost: list[Lost] = []
    for document in store.open_since(queues, STUCK_STATES, policy.cutoff(at), limit):
        verdict = stuck_verdict(document, live, at, policy)
        if isinstance(verdict, Recover) and store.note_recovery(document, at, verdict.reason):
            recover.append(verdict)
        elif isinstance(verdict, Lost):
            lost.append(verdict)
    recovered = _publish(publisher, declare, recover)
    given_up: list[str] = []
    for queue in sorted({v.message.queue for v in lost}):
        declare(queue)
    for verdict in lost:
        # The dead letter first: if the sweep dies between the two, the letter is there to requeue.
        message = verdict.message
        dead_letter(message, verdict.reason)
        if store.apply(bury(message, verdict.reason, at, error_type="Lost", worker_id=SWEEPER_ID)):
            given_up.append(message.id)
    acted = {*recovered, *given_up}
    verdicts: list[Recover | Lost] = [*recover, *lost]
    reasons = {v.message.id: v.reason for v in verdicts if v.message.id in acted}
    queues_of = {v.message.id: v.message.queue for v in verdicts if v.message.id in acted}
    for task_id in [*recovered, *given_up]:
        log.warning("stuck task %s %s: %s", task_id, "published again" if task_id in recovered else "lost", reasons[task_id])
    return RecoveryReport(recovered=recovered, lost=given_up, reasons=reasons, queues=queues_of)


def _publish(publisher: ConfirmingPublisher, declare: Callable[[str], None], recover: Sequence[Recover]) -> list[str]:
    if not recover:
        return []
    for queue in sorted({v.message.queue for v in recover}):
        declare(queue)
    stream = publisher.stream()
    try:
        stream.add([Outgoing(v.message.queue, v.message.encode(), v.message.id, v.message.priority, True) for v in recover])
        stream.wait()
    finally:
        confirmed = stream.take_confirmed()
    return confirmed
