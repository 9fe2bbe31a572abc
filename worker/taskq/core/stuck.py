"""Stuck tasks, as pure decisions: a `running` or `retrying` task whose message is gone.

A task stays `running` when the worker that ran it is gone and its message did not come back (a
classic queue on a broker that lost its data, a queue deleted by hand), and `retrying` when its
retry message never reached its delay queue or expired nowhere (a dead-letter or retry publish the
broker dropped). Nothing would ever finish such a task. The sweep (`taskq.recovery`, run by the
operator) finds them by age and decides here, per task document:

| document | verdict |
|---|---|
| `running`, no write for `running_after_s`, its worker has no live heartbeat | recover: publish attempt N again |
| `retrying`, no write for `retrying_after_s` (past every delay bucket) | recover: publish attempt N + 1 |
| either, recovered `max_recoveries` times already | lost: `dead` with the reason, dead-lettered |
| anything else | not stuck |

Publishing again is safe under the outcome claims (`taskq.core.fencing`): if the first message was
only slow, not gone, one attempt still records one outcome; the extra run is counted in the
document's `recoveries` and logged, so it has a cause to name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from taskq.core.message import TaskMessage
from taskq.core.states import TaskState

STUCK_STATES: frozenset[TaskState] = frozenset({TaskState.RUNNING, TaskState.RETRYING})


@dataclass(frozen=True)
class StuckPolicy:
    """When an open task counts as stuck, and how often it is published again before it is given up."""

    running_after_s: float = 900.0
    retrying_after_s: float = 900.0
    max_recoveries: int = 3

    def __post_init__(self) -> None:
        if self.running_after_s <= 0 or self.retrying_after_s <= 0 or self.max_recoveries < 0:
            raise ValueError("stuck policy needs positive ages and max_recoveries >= 0")

    def cutoff(self, now: datetime) -> datetime:
        """Documents last written before this may be stuck (the sweep's query bound)."""
        return now - timedelta(seconds=min(self.running_after_s, self.retrying_after_s))


@dataclass(frozen=True)
class Recover:
    """Publish `message` again (attempt N for a lost run, N + 1 for a lost retry)."""

    message: TaskMessage
    reason: str


@dataclass(frozen=True)
class Lost:
    """Give the task up: record it `dead` with `reason`, dead-letter `message`."""

    message: TaskMessage
    reason: str


Verdict = Recover | Lost


def message_of(document: dict[str, Any], attempt: int) -> TaskMessage | None:
    """The task message a document describes, as attempt `attempt`; None when the document cannot make one."""
    try:
        return TaskMessage(
            id=document["_id"],
            name=document["name"],
            queue=document["queue"],
            args=document.get("args") or [],
            kwargs=document.get("kwargs") or {},
            priority=int(document.get("priority") or 0),
            max_retries=document.get("max_retries"),
            timeout=document.get("timeout"),
            created_at=document["created_at"],
            attempt=max(attempt, 1),
        )
    except (KeyError, TypeError, ValueError):
        return None


def stuck_verdict(document: dict[str, Any], live_workers: set[str], now: datetime, policy: StuckPolicy) -> Verdict | None:
    """What to do about one task document (see the table above); None when it is not stuck."""
    state = document.get("state")
    updated = document.get("updated_at")
    if not isinstance(updated, datetime):
        return None
    age_s = (now - updated).total_seconds()
    attempts = int(document.get("attempts") or 0)
    if state == TaskState.RUNNING.value:
        worker = document.get("worker")
        if age_s < policy.running_after_s or (worker is not None and worker in live_workers):
            return None
        attempt = max(attempts, 1)
        why = f"running for {age_s:.0f}s without a write and its worker {worker!r} is gone"
    elif state == TaskState.RETRYING.value:
        if age_s < policy.retrying_after_s:
            return None
        attempt = attempts + 1
        why = f"retrying for {age_s:.0f}s: the retry of attempt {attempts} never arrived"
    else:
        return None
    message = message_of(document, attempt)
    if message is None:
        return None
    recoveries = int(document.get("recoveries") or 0)
    if recoveries >= policy.max_recoveries:
        return Lost(message, f"lost: {why}; published again {recoveries} times without an outcome")
    return Recover(message, why)
