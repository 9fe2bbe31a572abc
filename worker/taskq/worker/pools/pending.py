"""The queue of submitted attempts not started yet, and the intake every pool builds on it.

`put` never blocks; slot threads `get` with a timeout; the runtime takes attempts back with `take`
(on shutdown or when a channel is lost) and they will then never start.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from taskq.worker.pools.base import Attempt


class PendingAttempts:
    """A FIFO of attempts with a condition for the slot threads that wait on it."""

    def __init__(self) -> None:
        self._items: deque[Attempt] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False

    def put(self, attempt: Attempt) -> None:
        with self._ready:
            self._items.append(attempt)
            self._ready.notify()

    def get(self, timeout_s: float) -> Attempt | None:
        """The oldest attempt, waiting up to `timeout_s`; None on timeout or once closed."""
        deadline = time.monotonic() + timeout_s
        with self._ready:
            while not self._items or self._closed:
                if self._closed:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._ready.wait(left)
            return self._items.popleft()

    def take(self, predicate: Callable[[Attempt], bool] | None = None) -> list[Attempt]:
        """Remove and return every attempt (or those matching `predicate`), keeping the others in order."""
        with self._ready:
            if predicate is None:
                taken = list(self._items)
                self._items.clear()
                return taken
            taken, kept = [], deque[Attempt]()
            for attempt in self._items:
                (taken if predicate(attempt) else kept).append(attempt)
            self._items = kept
            return taken

    def close(self) -> None:
        """Stop handing out attempts (they stay takeable) and wake every waiter."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)


class PendingIntake:
    """The not-started side every pool shares: `submit`, `take_queued`, `queued` (mixed into each pool).

    A pool sets `_pending` and `_stopping` in its constructor; `submit` after `stop` raises.
    """

    _pending: PendingAttempts
    _stopping: threading.Event

    def submit(self, attempt: Attempt) -> None:
        if self._stopping.is_set():
            raise RuntimeError("the pool is stopped")
        self._pending.put(attempt)

    def take_queued(self, predicate: Callable[[Attempt], bool] | None = None) -> list[Attempt]:
        return self._pending.take(predicate)

    def queued(self) -> int:
        return len(self._pending)
