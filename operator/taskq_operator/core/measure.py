"""What to measure: which unacked figure to trust for a queue, and when a reading is actionable at all.

A passive declare gives exact ready and consumer counts but no unacked count. Two sources have one:
worker heartbeats (fresh, per pod; the operator's store reads) and the management API (lagging by a
statistics interval, and missing when no `management-url` is configured). The rules, in order:

1. live worker heartbeats exist: trust their in-flight sum (`amqp+heartbeats`);
2. else management figures no older than `MANAGEMENT_MAX_AGE_S` exist: trust their unacked count
   (`amqp+management`);
3. else no consumer holds deliveries, or no management API is configured (nothing else could ever
   tell): unacked is 0 (`amqp`);
4. else consumers may hold work nobody can count: the reading is not actionable (the policy then
   holds the replicas), with the reason why.

A queue a passive declare did not find has nothing ready and no consumers.

Pure; called by `taskq_operator.observe` for every queue of every tick; tested by tables in
`tests/unit/operator/test_operator_measure.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskq_operator.core.policy import Observation

SOURCE_HEARTBEATS = "amqp+heartbeats"
SOURCE_MANAGEMENT = "amqp+management"
SOURCE_AMQP = "amqp"
SOURCE_NONE = "none"
WAITING_FOR_MANAGEMENT = "waiting for the management API"
MANAGEMENT_MAX_AGE_S = 60.0
"""Older management figures are not acted on: twelve statistics intervals of the default 5 s."""


@dataclass(frozen=True)
class Sources:
    """Everything read about one queue in one tick, before choosing."""

    ready: int | None
    """Ready messages from the passive declare; None when the queue does not exist (yet)."""
    consumers: int = 0
    heartbeat_inflight: int | None = None
    """Sum of in-flight tasks of the queue's workers with fresh heartbeats; None when there are none."""
    management_unacked: int | None = None
    """Unacked messages from the management API's cached figures; None when it has no row for the queue."""
    management_age_s: float | None = None
    """How old those figures are (None: unknown, taken as fresh)."""
    management_configured: bool = False
    management_error: str | None = None
    publish_rate: float | None = None
    deliver_rate: float | None = None


@dataclass(frozen=True)
class Measurement:
    """The observation to decide on (None: not actionable), where its unacked figure came from, and why not."""

    observation: Observation | None
    source: str
    error: str | None = None


def _recent(age_s: float | None) -> bool:
    return age_s is None or age_s <= MANAGEMENT_MAX_AGE_S


def measure(sources: Sources) -> Measurement:
    """Apply the rules of this module to one queue's `sources`."""
    ready = sources.ready if sources.ready is not None else 0
    consumers = sources.consumers if sources.ready is not None else 0
    if sources.heartbeat_inflight is not None:
        unacked, source = sources.heartbeat_inflight, SOURCE_HEARTBEATS
    elif sources.management_unacked is not None and _recent(sources.management_age_s):
        unacked, source = sources.management_unacked, SOURCE_MANAGEMENT
    elif consumers == 0 or not sources.management_configured:
        unacked, source = 0, SOURCE_AMQP
    else:
        return Measurement(None, SOURCE_NONE, sources.management_error or WAITING_FOR_MANAGEMENT)
    observation = Observation(
        ready=ready,
        unacked=unacked,
        consumers=consumers,
        publish_rate=sources.publish_rate if _recent(sources.management_age_s) else None,
        deliver_rate=sources.deliver_rate if _recent(sources.management_age_s) else None,
    )
    return Measurement(observation, source)
