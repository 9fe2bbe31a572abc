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
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass
class Outcome(Generic[K, T]):
    """What finished in time (results, errors) and what did not (late: still running)."""

    results: dict[K, T] = field(default_factory=dict)
    errors: dict[K, BaseException] = field(default_factory=dict)
    late: dict[K, Future[None]] = field(default_factory=dict)


class Bounded(Generic[K, T]):
    """A thread pool whose `run` waits at most `timeout_s` (and `grace_s` for keys that were late before).

    Jobs run in at most `workers` chunks, each running its keys one after the other (cheap: a tick
    with 500 TaskQueues costs a few thread hand-offs, not 500); a key that was late runs alone next
    time, so one that hangs holds up only itself, and an innocent key that shared its chunk is back in
    the chunks as soon as it answers within the grace period.
    """

    def __init__(self, workers: int, name: str, *, grace_s: float = 0.2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._workers = workers
        self._grace_s = grace_s
        self._slow: set[K] = set()
        self._running: dict[K, Future[None]] = {}

    def busy(self, key: K) -> bool:
        """A job for `key` from an earlier run is still running."""
        running = self._running.get(key)
        if running is None:
            return False
        if running.done():
            del self._running[key]
            return False
        return True

    @staticmethod
    def _chunk(keys: list[K], jobs: Mapping[K, Callable[[], T]], done: dict[K, tuple[bool, Any]]) -> None:
        for key in keys:
            try:
                done[key] = (True, jobs[key]())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller with its key
                done[key] = (False, exc)

    def run(self, jobs: Mapping[K, Callable[[], T]], timeout_s: float) -> Outcome[K, T]:
        """Start every job whose key is not busy, wait up to `timeout_s`; busy keys come back late at once."""
        outcome: Outcome[K, T] = Outcome()
        done: dict[K, tuple[bool, Any]] = {}
        prompt: list[K] = []
        alone: list[K] = []
        for key in jobs:
            if self.busy(key):
                outcome.late[key] = self._running[key]
            else:
                (alone if key in self._slow else prompt).append(key)
        count = min(self._workers, len(prompt))
        chunks = [(part, self._pool.submit(self._chunk, part, jobs, done)) for part in (prompt[i::count] for i in range(count))]
        singles = [([key], self._pool.submit(self._chunk, [key], jobs, done)) for key in alone]
        wait([future for _, future in chunks], timeout=timeout_s)
        if singles:
            wait([future for _, future in singles], timeout=self._grace_s)
        finished = dict(done)  # a copy: late chunks keep writing to `done`
        for part, future in [*chunks, *singles]:
            for key in part:
                if key not in finished:
                    self._running[key] = future
                    self._slow.add(key)
                    outcome.late[key] = future
                    continue
                self._slow.discard(key)
                ok, value = finished[key]
                if ok:
                    outcome.results[key] = value
                else:
                    outcome.errors[key] = value
        return outcome

    def forget(self, keep: Callable[[K], bool]) -> None:
        """Drop what is remembered about keys for which `keep` is false (gone TaskQueues, brokers, stores)."""
        self._slow = {key for key in self._slow if keep(key)}
        self._running = {key: future for key, future in self._running.items() if keep(key)}

    def close(self) -> None:
        """Stop accepting jobs; running ones end on their own timeouts."""
        self._pool.shutdown(wait=False, cancel_futures=True)
