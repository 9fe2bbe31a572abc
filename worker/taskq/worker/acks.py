"""Ack bookkeeping for one channel: which delivery tags may be acked with one `multiple=True` ack.

Delivery tags on a channel increase. A multiple-ack up to tag N acknowledges every unacked tag
<= N, so it is safe only when every delivered tag up to N is finished; later finished tags are acked
one by one. Used on the consumer's connection thread only (no locking).
"""

from __future__ import annotations

from collections import deque

_PENDING = 0
_FINISHED = 1
_GONE = 2  # acked individually, or nacked back to the broker


class AckTracker:
    """Delivered-but-unacked tags of one channel, in delivery order."""

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._state: dict[int, int] = {}
        self._pending = 0

    def delivered(self, tag: int) -> None:
        self._order.append(tag)
        self._state[tag] = _PENDING
        self._pending += 1

    def is_pending(self, tag: int) -> bool:
        return self._state.get(tag) == _PENDING

    def forget(self, tag: int) -> bool:
        """The tag was nacked or rejected: no longer ours to ack. False if it was not pending."""
        if self._state.get(tag) != _PENDING:
            return False
        self._state[tag] = _GONE
        self._pending -= 1
        self._trim()
        return True

    def settle(self, tags: list[int]) -> tuple[int | None, list[int]]:
        """Mark `tags` finished; return (tag for one multiple-ack or None, tags to ack one by one)."""
        for tag in tags:
            if self._state.get(tag) == _PENDING:
                self._state[tag] = _FINISHED
                self._pending -= 1
        top = self._trim()
        singles = [tag for tag in self._order if self._state[tag] == _FINISHED]
        for tag in singles:
            self._state[tag] = _GONE
        self._trim()
        return top, singles

    def _trim(self) -> int | None:
        top = None
        while self._order and self._state[self._order[0]] != _PENDING:
            tag = self._order.popleft()
            if self._state.pop(tag) == _FINISHED:
                top = tag
        return top

    def reset(self) -> None:
        """The channel is gone: every tag on it is void."""
        self._order.clear()
        self._state.clear()
        self._pending = 0

    @property
    def unacked(self) -> int:
        """Tags delivered and not yet settled (the worker's in-flight count)."""
        return self._pending
