"""Tables for `taskq_operator.core.measure`: which unacked figure the operator trusts, and when a
reading is not actionable."""

from __future__ import annotations

import pytest

from taskq_operator.core.measure import (
    MANAGEMENT_MAX_AGE_S,
    SOURCE_AMQP,
    SOURCE_HEARTBEATS,
    SOURCE_MANAGEMENT,
    SOURCE_NONE,
    WAITING_FOR_MANAGEMENT,
    Sources,
    measure,
)
from taskq_operator.core.policy import Observation


@pytest.mark.parametrize(
    ("sources", "observation", "source", "error"),
    [
        # live heartbeats win, even over fresher-looking management figures
        (Sources(ready=5, consumers=2, heartbeat_inflight=3, management_unacked=9, management_configured=True),
         Observation(5, 3, 2), SOURCE_HEARTBEATS, None),
        # heartbeats that report nothing in flight are still the truth
        (Sources(ready=0, consumers=1, heartbeat_inflight=0, management_unacked=4, management_configured=True),
         Observation(0, 0, 1), SOURCE_HEARTBEATS, None),
        # no heartbeats: the management API's unacked count
        (Sources(ready=7, consumers=1, management_unacked=4, management_configured=True),
         Observation(7, 4, 1), SOURCE_MANAGEMENT, None),
        # management figures are trusted up to MANAGEMENT_MAX_AGE_S old, not after
        (Sources(ready=7, consumers=1, management_unacked=4, management_age_s=59.0, management_configured=True),
         Observation(7, 4, 1), SOURCE_MANAGEMENT, None),
        (Sources(ready=7, consumers=1, management_unacked=4, management_age_s=61.0, management_configured=True),
         None, SOURCE_NONE, WAITING_FOR_MANAGEMENT),
        (Sources(ready=7, consumers=0, management_unacked=4, management_age_s=61.0, management_configured=True),
         Observation(7, 0, 0), SOURCE_AMQP, None),
        # nobody consumes: nothing can be unacked
        (Sources(ready=12, consumers=0, management_configured=True), Observation(12, 0, 0), SOURCE_AMQP, None),
        # no management API configured: nothing else could ever tell, act on the ready count
        (Sources(ready=12, consumers=3, management_configured=False), Observation(12, 0, 3), SOURCE_AMQP, None),
        # consumers, management configured but no recent figures: hold, and say why
        (Sources(ready=12, consumers=3, management_configured=True), None, SOURCE_NONE, WAITING_FOR_MANAGEMENT),
        (Sources(ready=12, consumers=3, management_configured=True, management_error="management API timed out"),
         None, SOURCE_NONE, "management API timed out"),
        # the queue does not exist yet: nothing ready, no consumers
        (Sources(ready=None, consumers=4, management_configured=True), Observation(0, 0, 0), SOURCE_AMQP, None),
        (Sources(ready=None, heartbeat_inflight=2), Observation(0, 2, 0), SOURCE_HEARTBEATS, None),
    ],
)
def test_which_unacked_source_is_trusted(
    sources: Sources, observation: Observation | None, source: str, error: str | None
) -> None:
    measured = measure(sources)
    assert (measured.observation, measured.source, measured.error) == (observation, source, error)


def test_rates_come_along_whatever_the_unacked_source() -> None:
    measured = measure(Sources(ready=1, consumers=1, heartbeat_inflight=1, publish_rate=3.5, deliver_rate=2.0))
    assert measured.observation == Observation(1, 1, 1, publish_rate=3.5, deliver_rate=2.0)


def test_stale_management_rates_are_dropped_too() -> None:
    stale = Sources(ready=1, consumers=1, heartbeat_inflight=0, management_age_s=MANAGEMENT_MAX_AGE_S + 1, publish_rate=3.5)
    fresh = Sources(ready=1, consumers=1, heartbeat_inflight=0, management_age_s=MANAGEMENT_MAX_AGE_S, publish_rate=3.5)
    assert measure(stale).observation == Observation(1, 0, 1)
    assert measure(fresh).observation == Observation(1, 0, 1, publish_rate=3.5)
