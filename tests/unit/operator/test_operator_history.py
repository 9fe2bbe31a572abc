"""`taskq_operator.core.history`: the scale-down history as annotation text and back, conservatively."""

from __future__ import annotations

import pytest

from taskq_dev.manifests import example
from taskq_operator.core.history import MAX_ENTRIES, compact, decode, encode
from taskq_operator.core.policy import History, Observation, decide, remember
from taskq_operator.core.spec import parse_taskqueue

OFFSET = 1.8e9  # clock time + OFFSET = epoch seconds


def test_only_entries_that_can_still_hold_a_scale_down_are_kept() -> None:
    entries = [(0.0, 3), (10.0, 8), (20.0, 5), (30.0, 6), (40.0, 2)]
    assert compact(entries, 40.0, 300) == ((10.0, 8), (30.0, 6), (40.0, 2))
    assert compact(entries, 325.0, 300) == ((30.0, 6), (40.0, 2))  # 8 left the window


def test_text_round_trip_is_short_and_never_earlier() -> None:
    entries = [(10.2, 8), (30.0, 6), (40.0, 2)]
    text = encode(entries, 41.0, 300, OFFSET)
    assert text == "1800000011=8,1800000030=6,2"
    assert decode(text, 90.0, OFFSET) == ((11.0, 8), (30.0, 6), (90.0, 2))  # rounded up; the current one: now
    assert encode(entries, 41.0, 300, OFFSET, floor=2) == "1800000011=8,1800000030=6"
    assert encode([(40.0, 0)], 41.0, 300, OFFSET) == ""  # idle at minReplicas: nothing to keep


@pytest.mark.parametrize("text", ["", None, "x", "1=a", "5,1800000000=3", "1800000000=-1", ",".join(["1"] * 70)])
def test_bad_text_gives_no_history(text: str | None) -> None:
    assert decode(text, 10.0, OFFSET) == ()


def test_entries_are_capped_keeping_the_current_and_the_highest() -> None:
    entries = [(float(i), 1000 - i) for i in range(200)]
    kept = compact(entries, 200.0, 300)
    assert len(kept) == MAX_ENTRIES and kept[0] == (0.0, 1000) and kept[-1] == (199.0, 801)


def test_a_restored_history_holds_like_the_uninterrupted_one() -> None:
    policy = parse_taskqueue(example(scaling={"maxReplicas": 20, "tasksPerReplica": 50,
                                              "scaleDown": {"stabilizationWindowSeconds": 60}})).scaling
    history = remember(History(6), 0.0, 6, 60)
    history = remember(history, 5.0, 2, 60)
    restored = History(6, decode(encode(history.recommendations, 5.0, 60, OFFSET), 30.0, OFFSET))
    for now, held in ((30.0, True), (59.0, True), (62.0, False)):
        uninterrupted = decide(policy, Observation(0, 0), history, now)
        after_restart = decide(policy, Observation(0, 0), restored, now)
        assert (uninterrupted.replicas == 6) is held
        assert after_restart.replicas >= uninterrupted.replicas
