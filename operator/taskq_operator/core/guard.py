"""Hold a scale-down while in-flight work cannot be placed on pods: a pure rule over the policy's decision.

Scaling down first ranks pods by their in-flight tasks (`pod-deletion-cost` from worker heartbeats), so
idle pods go first. When the store's heartbeats are unreadable, or fewer workers report than the queue
has consumers, some consumer may hold unacked work nobody can place: removing pods then may kill busy
ones, and re-ranking would reset the costs to 0. So such a scale-down is held (the replicas stay) and
the reason is given; scale-ups, fallback and paused decisions are never held, and with no consumer on
the queue nothing is held. One consumer per worker process (`taskq.worker.consumer`).

Pure; called by `taskq_operator.scaler` after `core.policy.decide`; tested in
`tests/unit/operator/test_operator_guard.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from taskq_operator.core.policy import Decision

HELD = "ScaleDownHeld"
HELD_REASONS = ("ScaleDown", "OutOfBounds")
"""Decisions that remove pods because of the backlog or the bounds; the user's own (Paused, Fallback) are not held."""


@dataclass(frozen=True)
class Attribution:
    """What is known about who holds deliveries: consumers on the queue and workers reporting heartbeats."""

    consumers: int
    reporting: int
    store_error: str | None = None
    """Why the heartbeats could not be read (None: they were)."""


@dataclass(frozen=True)
class Hold:
    """Why a scale-down is held: a condition reason and a message."""

    reason: str
    message: str


def unattributed(attribution: Attribution) -> Hold | None:
    """Why some consumer's in-flight work cannot be placed on a pod, or None when every consumer reports."""
    consumers = attribution.consumers
    if consumers <= 0:
        return None
    if attribution.store_error is not None:
        return Hold(
            "StoreUnavailable",
            f"worker heartbeats unreadable ({attribution.store_error}); {consumers} consumer(s) may hold unacked work",
        )
    if attribution.reporting < consumers:
        silent = consumers - attribution.reporting
        return Hold(
            "HeartbeatsMissing",
            f"{silent} of {consumers} consumers have no fresh heartbeat; which pods hold unacked work is unknown",
        )
    return None


def guard_scale_down(decision: Decision, current: int, attribution: Attribution) -> tuple[Decision, Hold | None]:
    """`decision`, or the current replicas when it would remove pods whose work cannot be placed (and why)."""
    if decision.replicas >= current or decision.reason not in HELD_REASONS:
        return decision, None
    hold = unattributed(attribution)
    if hold is None:
        return decision, None
    message = f"holding {current} replicas instead of {decision.replicas}: {hold.message}; wanted: {decision.message}"
    return replace(decision, replicas=current, reason=HELD, message=message), hold
