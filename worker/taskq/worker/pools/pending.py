"""The queue of submitted attempts not started yet, and the intake every pool builds on it.

`put` never blocks; slot threads `get` with a timeout; the runtime takes attempts back with `take`
(on shutdown or when a channel is lost) and they will then never start.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from taskq.core.limits import kill_grace_s
from taskq.worker.pools.base import Attempt, PoolEvent


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
        """The oldest attempt whose `precheck` (asked outside the lock) still wants it, waiting up to
        `timeout_s`; None on timeout or once closed."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._ready:
                while not self._items or self._closed:
                    if self._closed:
                        return None
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._ready.wait(left)
                attempt = self._items.popleft()
            if attempt.precheck is None or attempt.precheck():
                return attempt

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
    """What every pool shares (mixed into each): its settings, the not-started queue (`submit`,
    `take_queued`, `queued`), the internal-failure slot and the kill grace of an attempt.

    A pool calls `_init_intake` first in its constructor; `submit` after `stop` raises.
    """

    def _init_intake(
        self, size: int, events: queue.Queue[PoolEvent], task_modules: Sequence[str], kill_grace: float | None
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs size >= 1")
        self.size = size
        self._events = events
        self._task_modules = list(task_modules)
        self._kill_grace_s = kill_grace
        self._pending = PendingAttempts()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._started = False

    def submit(self, attempt: Attempt) -> None:
        if self._stopping.is_set():
            raise RuntimeError("the pool is stopped")
        self._pending.put(attempt)

    def take_queued(self, predicate: Callable[[Attempt], bool] | None = None) -> list[Attempt]:
        return self._pending.take(predicate)

    def queued(self) -> int:
        return len(self._pending)

    def failure(self) -> BaseException | None:
        return self._failure

    def _grace(self, attempt: Attempt) -> float:
        """How long `attempt` gets after its time limit before it is killed or abandoned."""
        return self._kill_grace_s if self._kill_grace_s is not None else kill_grace_s(attempt.timeout_s)
