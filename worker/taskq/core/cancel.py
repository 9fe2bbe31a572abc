"""Cancellation as pure data: which attempt a cancel claims, its fields, and the notice workers receive.

A cancel is an outcome like any other (`taskq.core.fencing`): it claims the outcome of the task's
current attempt (`claims/<task>#a<attempt>`, state `cancelled`), so it races a worker finishing that
attempt through the same unique `_id` insert, and exactly one of the two wins. A worker whose outcome
lost to a cancel finds it refused as stale and only acks its message. The attempt claimed is the one
a document's state points at: `queued` and `running` its own, `retrying` the next one (its message
waits in a delay queue).

After the claim, the canceller publishes a `CancelNotice` on the queue's control exchange
(`control_exchange`, fanout): every connected worker of the queue receives it at once and drops the
attempt if it has it prefetched (acked without running), kills it if it runs in the process pool, or
sets the cooperative flag (`taskq.current().cancelled`) in the thread and asyncio pools. The notice
is an optimisation, never the record. A worker that connects later reads the queue's cancel markers
of the last day (one small document per cancel) once, at connect. A delivery out of a delay queue
(a retry, a delayed task) is checked against the store before it runs. What is left: a worker that
was connected but lost the notice runs a first delivery; its outcome is refused (the claim stands)
and the task stays `cancelled`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskq.core.document import TaskError
from taskq.core.fencing import claim_to_check, outcome_fence
from taskq.core.states import TaskState

CONTROL_SUFFIX = ".control"
CANCELLED_ERROR = "Cancelled"
RECENT_CANCELS = 100_000
"""How many cancelled (task, attempt) pairs a worker remembers to skip their deliveries without a store read."""
RECENT_CANCEL_S = 86_400.0
"""How long a worker remembers one, and how far back a connecting worker reads the cancel markers."""


def control_exchange(queue: str) -> str:
    """The fanout exchange on which cancels of `queue`'s tasks are announced to its workers."""
    return queue + CONTROL_SUFFIX


def attempt_to_cancel(document: dict[str, Any]) -> int | None:
    """The attempt whose outcome a cancel of this document claims, or None when the task is final."""
    return claim_to_check(document)


def cancel_fields(now: datetime, reason: str | None = None) -> dict[str, Any]:
    """What a cancel writes into the task document (through its claim)."""
    text = reason or "cancelled on request"
    return {
        "state": TaskState.CANCELLED.value,
        "updated_at": now,
        f"timestamps.{TaskState.CANCELLED.value}": now,
        "error": TaskError.storable(CANCELLED_ERROR, text).as_dict(),
    }


def cancel_fence(attempt: int) -> int:
    """The fence a cancel of `attempt` leaves: that attempt's outcome fence."""
    return outcome_fence(attempt)


@dataclass(frozen=True)
class CancelNotice:
    """Attempt `attempt` of task `task_id` was cancelled (its claim is in the store)."""

    task_id: str
    attempt: int

    def encode(self) -> bytes:
        return json.dumps({"cancel": self.task_id, "attempt": self.attempt}).encode()

    @staticmethod
    def decode(body: bytes) -> CancelNotice | None:
        """The notice in `body`, or None when it is not one (a control message is never trusted further)."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        task_id, attempt = data.get("cancel"), data.get("attempt")
        if not isinstance(task_id, str) or not task_id or len(task_id) > 200:
            return None
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            return None
        return CancelNotice(task_id, attempt)


@dataclass(frozen=True)
class CancelResult:
    """What `cancel` did: `cancelled` True when its claim won; `state` the task's state afterwards.

    `attempt` is the attempt claimed, `queue` the task's queue, `notified` whether its workers were
    sent the notice (set by the client).
    """

    task_id: str
    cancelled: bool
    state: TaskState
    attempt: int | None = None
    queue: str | None = None
    notified: bool = False
