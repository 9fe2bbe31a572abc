"""What to do with a delivery: the store transition to record, then the broker action to take.

A pure mapping from "how it went" to a `Decision`, one function per situation:

| situation | state | broker action |
|---|---|---|
| attempt returned a storable result | `succeeded` | ack |
| attempt returned an unstorable or oversized result | `failed` (`UnstorableResult`) | ack |
| attempt raised an error its task says not to retry (`dont_retry_for`, `taskq.Reject`) | `failed` | ack |
| attempt failed (error, timeout, lost child, memory) with retries left | `retrying` | publish to a delay queue, ack |
| attempt failed with no retries left | `dead` | publish to `Q.dead`, ack |
| redelivered, task already final | (nothing) | ack without running (`stale`) |
| delivered more than `max_deliveries` times | `dead` (`delivery-limit`) | publish to `Q.dead`, ack |
| body not a task (`malformed`) or task not registered here | `dead` | publish to `Q.dead`, ack |

The worker's committer records the transition in a group commit; the connection stage performs the
action once it is recorded. Table tests: `tests/unit/test_core_outcomes.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from taskq.core.document import RESULT_LIMIT_BYTES, TaskError
from taskq.core.limits import AttemptLimits
from taskq.core.message import TASK_ID_PATTERN, TaskMessage
from taskq.core.retry import RetryPolicy, delay_bucket_ms, should_retry
from taskq.core.states import TaskState, allowed_sources
from taskq.core.storable import storable_problem
from taskq.core.transitions import Transition, bury, finish

REASON_LIMIT_CHARS = 500
DELIVERY_LIMIT_REASON = "delivery-limit"


@dataclass(frozen=True)
class Ack:
    """Acknowledge the delivery: its outcome is recorded (or it needs nothing recorded)."""


@dataclass(frozen=True)
class Requeue:
    """Give the delivery back to the broker unprocessed (shutdown, a channel going away)."""


@dataclass(frozen=True)
class Run:
    """Hand the delivery to the pool: nothing to record yet."""


@dataclass(frozen=True)
class Retry:
    """Publish the next attempt to the delay queue for `bucket_ms`, expiring after `delay_ms`; then ack."""

    message: TaskMessage
    delay_ms: int
    bucket_ms: int


@dataclass(frozen=True)
class DeadLetter:
    """Publish `body` to the dead-letter queue with `reason` in its header; then ack."""

    body: bytes
    reason: str


Action = Ack | Requeue | Run | Retry | DeadLetter


@dataclass(frozen=True)
class Decision:
    """A transition to record (None: nothing to record) and the action to take once it is."""

    transition: Transition | None
    action: Action
    event: str
    fields: dict[str, Any] = field(default_factory=dict)
    # When the transition is refused as stale (the task is already final), only ack: the action
    # (a retry, a dead letter) belongs to whoever made the task final. Malformed and undeliverable
    # messages are dead-lettered whatever the store says.
    act_only_if_recorded: bool = True


class RedeliveryCheck(NamedTuple):
    """What the store found for a redelivered message: the task's state, its deliveries so far (this
    one too), and the outcome claimed for the redelivered attempt, if any (see `taskq.core.fencing`)."""

    state: TaskState | None
    deliveries: int
    claimed: TaskState | None = None


@dataclass(frozen=True)
class AttemptError:
    """How an attempt failed: the storable error, whether the task allows a retry, and the kind.

    `kind` is one of `raised`, `timeout`, `lost` (the child process died), `memory`, `unstorable`,
    `rejected`.
    """

    error: TaskError
    retryable: bool = True
    kind: str = "raised"


def _base_fields(message: TaskMessage, duration_s: float) -> dict[str, Any]:
    return {"task_id": message.id, "name": message.name, "attempt": message.attempt, "duration_ms": round(duration_s * 1000, 3)}


def result_problem(result_json: str | None) -> tuple[Any, str | None]:
    """The stored result decoded from the pool's JSON, and why it cannot be stored (None when it can)."""
    if result_json is None:
        return None, None
    size = len(result_json.encode("utf-8", "surrogatepass"))
    if size > RESULT_LIMIT_BYTES:
        return None, f"result of {size} bytes is over the {RESULT_LIMIT_BYTES}-byte limit"
    try:
        value = json.loads(result_json)
    except (ValueError, RecursionError) as exc:
        return None, f"result is not JSON data: {type(exc).__name__}"
    return value, storable_problem(value, "result")


def retry_action(message: TaskMessage, policy: RetryPolicy, unit_random: float) -> Retry:
    """The retry of failed attempt `message.attempt`: its next attempt, jittered delay and delay bucket."""
    delay_s = policy.delay(message.attempt, unit_random)
    bucket = delay_bucket_ms(delay_s)
    return Retry(message.next_attempt(), max(1, min(bucket, int(delay_s * 1000))), bucket)


def attempt_outcome(
    message: TaskMessage,
    *,
    result_json: str | None,
    failure: AttemptError | None,
    limits: AttemptLimits,
    duration_s: float,
    worker_id: str,
    policy: RetryPolicy,
    now: datetime,
    started_at: datetime | None,
    start_recorded: bool,
    unit_random: float,
    epoch: int = 1,
) -> Decision:
    """The decision for a finished attempt (delivery `epoch` of it): succeeded, failed, retrying (with a delay) or dead."""
    base = _base_fields(message, duration_s)

    def record(target: TaskState, *, result: Any = None, error: TaskError | None = None) -> Transition:
        return finish(
            message,
            target,
            worker_id,
            now,
            started_at=started_at,
            result=result,
            error=error,
            start_recorded=start_recorded,
            epoch=epoch,
        )

    if failure is None:
        value, problem = result_problem(result_json)
        if problem is None:
            transition = record(TaskState.SUCCEEDED, result=value)
            return Decision(transition, Ack(), "task.succeeded", base)
        failure = AttemptError(TaskError.storable("UnstorableResult", problem), retryable=False, kind="unstorable")
    error = failure.error
    fields = {**base, "error_type": error.type, "error": error.message, "kind": failure.kind}
    if not failure.retryable:
        transition = record(TaskState.FAILED, error=error)
        return Decision(transition, Ack(), "task.failed", fields)
    if should_retry(message.attempt, limits.max_retries):
        retry = retry_action(message, policy, unit_random)
        transition = record(TaskState.RETRYING, error=error)
        return Decision(transition, retry, "task.retrying", {**fields, "delay_ms": retry.delay_ms})
    transition = record(TaskState.DEAD, error=error)
    reason = f"retries exhausted after attempt {message.attempt}: {error.type}: {error.message}"
    return Decision(transition, DeadLetter(message.encode(), reason[:REASON_LIMIT_CHARS]), "task.dead", fields)


def redelivery_outcome(
    message: TaskMessage,
    body: bytes,
    *,
    state: TaskState | None,
    deliveries: int,
    max_deliveries: int,
    now: datetime,
    claimed: TaskState | None = None,
    retry: Retry | None = None,
) -> Decision:
    """A redelivered message: ack it if its task is final, bury it past the delivery limit, else run it.

    `deliveries` counts this delivery too (the broker's or the store's count of earlier ones, plus one).
    `claimed`: the outcome already claimed for this attempt. A claimed `retrying` means the attempt
    is over but, for a redelivery, its retry may never have been published (the publish was refused,
    the connection dropped before the ack): the caller passes `retry` (the next attempt to its delay
    queue) and the delivery does it instead of running again; past the delivery limit the next
    attempt is buried. Without `retry` (a republished copy, whose original went on normally) a
    decided attempt is only acked.
    """
    fields: dict[str, Any] = {"task_id": message.id, "name": message.name, "attempt": message.attempt, "deliveries": deliveries}
    if state is not None and state.is_final:
        return Decision(None, Ack(), "task.redelivered_final", {**fields, "state": state.value})
    if deliveries > max_deliveries:
        reason = f"{DELIVERY_LIMIT_REASON}: delivered {deliveries} times (limit {max_deliveries}) without an outcome"
        buried = message.next_attempt() if claimed is TaskState.RETRYING else message
        transition = bury(buried, reason, now, error_type="DeliveryLimit", epoch=deliveries)
        return Decision(
            transition, DeadLetter(body, reason), "task.delivery_limit", {**fields, "reason": reason}, act_only_if_recorded=False
        )
    if claimed is not None:
        if retry is not None:
            return Decision(None, retry, "task.retry_resent", {**fields, "delay_ms": retry.delay_ms})
        return Decision(None, Ack(), "task.redelivered_decided", {**fields, "state": claimed.value})
    return Decision(None, Run(), "task.redelivered", fields)


def unknown_task_outcome(message: TaskMessage, body: bytes, reason: str, now: datetime) -> Decision:
    """A well-formed message naming a task this worker does not have: dead at once."""
    fields = {"task_id": message.id, "name": message.name, "attempt": message.attempt, "reason": reason}
    return Decision(
        bury(message, reason, now), DeadLetter(body, reason[:REASON_LIMIT_CHARS]), "task.undeliverable", fields, False
    )


def readable_task_id(body: bytes) -> str | None:
    """The `id` of a malformed body when it is a JSON object with a plausible task id, else None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("id"), str) and re.fullmatch(TASK_ID_PATTERN, data["id"]):
        return str(data["id"])
    return None


def malformed_outcome(body: bytes, reason: str, now: datetime) -> Decision:
    """A body that is not a valid task: dead-letter it; mark an existing document dead when its id is readable."""
    task_id = readable_task_id(body) if len(body) <= 1024 * 1024 else None
    transition = None
    if task_id is not None:
        fields: dict[str, Any] = {
            "state": TaskState.DEAD.value,
            "updated_at": now,
            "timestamps.dead": now,
            "error": TaskError.storable("MalformedMessage", reason).as_dict(),
        }
        # No insert: a malformed body cannot make a document; it can only end an existing one.
        transition = Transition(task_id, TaskState.DEAD, allowed_sources(TaskState.DEAD), fields, None)
    short = reason[:REASON_LIMIT_CHARS]
    return Decision(transition, DeadLetter(body, short), "message.malformed", {"task_id": task_id, "reason": short}, False)
