"""Fencing of task writes, as pure data: which write may stand over which, and the outcome claims.

Every write of a task carries a fence: its attempt and the delivery epoch (how many times that
attempt's message has been delivered, counting this one). A write is refused when what stands has a
higher fence, so a stale delivery (a redelivered message's first worker, still running after its
connection dropped) cannot write over a newer one. An attempt's outcome (succeeded, failed,
retrying, dead) sets the highest fence of its attempt: after it, no start of that attempt applies.

The outcome itself is decided by a claim: one document per task and attempt, `_id` derived from
both, inserted before the task document is written. A unique `_id` insert is the one write that
MongoDB and FerretDB both make atomic (FerretDB 1.x applies every update as read, change in Go,
replace by `_id`), so exactly one outcome per attempt wins, on either store. Readers that need the
truth (the redelivery check, `TaskStore.get`, `states_of`) look at the claim of a task whose
document is not final yet; the store adapter rolls such a document forward.

Used by `taskq.core.transitions` (fences of transitions) and `taskq.store.mongo` (claims).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskq.core.states import TaskState

EPOCHS_PER_ATTEMPT = 1_000_000
"""Fence values of one attempt: `attempt * EPOCHS_PER_ATTEMPT + epoch`; the last is the outcome's."""

OUTCOME_STATES: frozenset[TaskState] = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.RETRYING, TaskState.DEAD, TaskState.CANCELLED}
)
"""An attempt's possible outcomes; `cancelled` is claimed by a cancel (`taskq.core.cancel`), the others by workers."""


def fence(attempt: int, epoch: int) -> int:
    """The fence of a start or progress write of delivery `epoch` of attempt `attempt`."""
    return max(attempt, 0) * EPOCHS_PER_ATTEMPT + min(max(epoch, 0), EPOCHS_PER_ATTEMPT - 2)


def outcome_fence(attempt: int) -> int:
    """The fence an outcome of `attempt` leaves: above every delivery of that attempt, below the next attempt."""
    return max(attempt, 0) * EPOCHS_PER_ATTEMPT + EPOCHS_PER_ATTEMPT - 1


def claim_id(task_id: str, attempt: int) -> str:
    """The `_id` of the outcome claim of one attempt of one task."""
    return f"{task_id}#a{int(attempt)}"


def claim_document(
    task_id: str, attempt: int, target: TaskState, fields: dict[str, Any], *, worker: str | None, epoch: int, now: datetime
) -> dict[str, Any]:
    """The claim of an outcome: who decided it and the document fields it writes (to roll a document forward).

    The fields' names are dotted paths, which a stored document cannot use as keys: `:` stands for
    `.` in them (no field taskq writes has a `:` in its name).
    """
    return {
        "_id": claim_id(task_id, attempt),
        "task_id": task_id,
        "attempt": attempt,
        "state": target.value,
        "worker": worker,
        "epoch": epoch,
        "claimed_at": now,
        "set": {name.replace(".", ":"): value for name, value in fields.items()},
    }


def is_own_claim(claim: dict[str, Any], target: TaskState, worker: str | None, epoch: int) -> bool:
    """Whether a claim found in place is this writer's own, from an earlier try whose reply was lost."""
    return bool(claim.get("state") == target.value and claim.get("worker") == worker and claim.get("epoch") == epoch)


def claim_to_check(document: dict[str, Any]) -> int | None:
    """The attempt whose claim may be ahead of a task document, or None when the document is final.

    A `retrying` document's next attempt may have ended already; any other open state's own
    attempt may have (the document of a short task shows `queued` until its one write lands).
    """
    state = document.get("state")
    if state not in {s.value for s in TaskState} or TaskState(state).is_final:
        return None
    attempts = int(document.get("attempts") or 0)
    return attempts + 1 if state == TaskState.RETRYING.value else max(attempts, 1)


def claimed_fields(claim: dict[str, Any]) -> dict[str, Any]:
    """The `$set` fields a claim records (see `claim_document`), with the fence of its outcome."""
    stored = claim.get("set")
    fields = {str(name).replace(":", "."): value for name, value in (stored if isinstance(stored, dict) else {}).items()}
    fields["fence"] = outcome_fence(int(claim.get("attempt") or 0))
    return fields


def rolled_forward(document: dict[str, Any], claim: dict[str, Any]) -> dict[str, Any]:
    """A copy of `document` as it reads once the claim's fields are written (dotted names nest)."""
    result = {**document}
    for name, value in claimed_fields(claim).items():
        head, _, rest = name.partition(".")
        if rest:
            inner = result.get(head)
            result[head] = {**(inner if isinstance(inner, dict) else {}), rest: value}
        else:
            result[name] = value
    return result


def admits(transition_fence: int, outcome: bool, sources: frozenset[TaskState], state: TaskState, standing: int) -> bool:
    """Whether a write with `transition_fence` may apply over a document in `state` with fence `standing`.

    What the MongoDB path's filter says, for the FerretDB path's check on a document read by `_id`.
    """
    if outcome:
        return standing <= transition_fence
    return state in sources and standing <= transition_fence
