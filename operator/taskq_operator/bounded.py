"""Run blocking calls side by side and wait for them only up to a deadline; stragglers keep running.

The scaler's tick and the observers hand each TaskQueue's (or each broker's and store's) blocking work to
`Bounded.run`, so one blackholed broker, one store nobody answers or one slow API call costs the others at
most the deadline, and only once: a key that missed its deadline is "slow" until it answers in time again,
and later runs wait for it only `grace_s` beyond the others. The caller keeps the stragglers' futures and
does not start the same key again while one runs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass
class Outcome(Generic[K, T]):
    """What finished in time (results, errors) and what did not (late: still running)."""

    results: dict[K, T] = field(default_factory=dict)
    errors: dict[K, BaseException] = field(default_factory=dict)
    late: dict[K, Future[T]] = field(default_factory=dict)


class Bounded(Generic[K, T]):
    """A thread pool whose `run` waits at most `timeout_s` (and `grace_s` for keys that were late before)."""

    def __init__(self, workers: int, name: str, *, grace_s: float = 0.2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._grace_s = grace_s
        self._slow: set[K] = set()
        self._running: dict[K, Future[T]] = {}

    def busy(self, key: K) -> bool:
        """A job for `key` from an earlier run is still running."""
        running = self._running.get(key)
        if running is None:
            return False
        if running.done():
            del self._running[key]
            return False
        return True

    def run(self, jobs: Mapping[K, Callable[[], T]], timeout_s: float) -> Outcome[K, T]:
        """Start every job whose key is not busy, wait up to `timeout_s`; busy keys come back late at once."""
        outcome: Outcome[K, T] = Outcome()
        futures: dict[K, Future[T]] = {}
        for key, job in jobs.items():
            if self.busy(key):
                outcome.late[key] = self._running[key]
            else:
                futures[key] = self._pool.submit(job)
        wait([f for k, f in futures.items() if k not in self._slow], timeout=timeout_s)
        slow = [f for k, f in futures.items() if k in self._slow]
        if slow:
            wait(slow, timeout=self._grace_s)
        for key, future in futures.items():
            if not future.done():
                self._running[key] = outcome.late[key] = future
                self._slow.add(key)
                continue
            self._slow.discard(key)
            error = future.exception()
            if error is None:
                outcome.results[key] = future.result()
            else:
                outcome.errors[key] = error
        return outcome

    def forget(self, keep: Callable[[K], bool]) -> None:
        """Drop what is remembered about keys for which `keep` is false (gone TaskQueues, brokers, stores)."""
        self._slow = {key for key in self._slow if keep(key)}
        self._running = {key: future for key, future in self._running.items() if keep(key)}

    def close(self) -> None:
        """Stop accepting jobs; running ones end on their own timeouts."""
        self._pool.shutdown(wait=False, cancel_futures=True)
