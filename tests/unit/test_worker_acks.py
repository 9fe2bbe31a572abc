"""The worker's ack bookkeeping: one multiple-ack up to the finished prefix, singles beyond it."""

from __future__ import annotations

from taskq.worker.acks import AckTracker


def _tracker(tags: range) -> AckTracker:
    tracker = AckTracker()
    for tag in tags:
        tracker.delivered(tag)
    return tracker


def test_contiguous_prefix_is_one_multiple_ack() -> None:
    tracker = _tracker(range(1, 6))
    assert tracker.settle([1, 2, 3]) == (3, [])
    assert tracker.unacked == 2


def test_finished_after_a_gap_are_acked_singly_and_never_twice() -> None:
    tracker = _tracker(range(1, 6))
    assert tracker.settle([2, 4]) == (None, [2, 4])
    assert tracker.settle([1]) == (1, [])
    assert tracker.settle([3, 5]) == (5, [])
    assert tracker.unacked == 0


def test_forgotten_tags_do_not_block_the_prefix() -> None:
    tracker = _tracker(range(1, 4))
    assert tracker.forget(1)
    assert not tracker.forget(1)
    assert tracker.settle([2]) == (2, [])
    assert tracker.unacked == 1


def test_unknown_and_repeated_tags_are_ignored() -> None:
    tracker = _tracker(range(1, 3))
    assert tracker.settle([7]) == (None, [])
    assert tracker.settle([1]) == (1, [])
    assert tracker.settle([1]) == (None, [])


def test_reset_voids_every_tag() -> None:
    tracker = _tracker(range(1, 4))
    tracker.reset()
    assert tracker.unacked == 0
    assert tracker.settle([1, 2]) == (None, [])
