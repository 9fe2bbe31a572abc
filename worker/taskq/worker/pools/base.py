"""The contract between the worker runtime and its execution pools: attempts in, events out.

Pure data and a Protocol (no I/O). The runtime (consumer/committer) submits `Attempt`s to a `Pool`;
the pool puts `Started`, `Progress` and exactly one `Completed` per started attempt on the
`events` queue it was built with. `key` is the runtime's delivery handle, passed back untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Attempt:
    """One attempt to run a registered task; `timeout_s` is the effective hard limit (already capped)."""

    key: Hashable
    task_id: str
    name: str
    attempt: int
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout_s: float
    # Asked by the pool right before the attempt starts (None: always start). False means the runtime
    # has settled the delivery meanwhile (its task became final while it waited): the pool drops it.
    precheck: Callable[[], bool] | None = None


@dataclass(frozen=True)
class ErrorInfo:
    """Why an attempt failed, as storable text.

    `kind` is one of "raised", "timeout", "lost", "memory", "unstorable", "rejected", "cancelled"; `retryable` is
    False when the task's own rules (retry_for/dont_retry_for/Reject) say not to retry.
    """

    type: str
    message: str
    traceback: str
    kind: str
    retryable: bool


@dataclass(frozen=True)
class Started:
    """The attempt began running (UTC wall clock)."""

    key: Hashable
    started_at: datetime


@dataclass(frozen=True)
class Progress:
    """The task reported progress (already validated and rate-limited in the task's process)."""

    key: Hashable
    fraction: float
    message: str | None
    at: datetime


@dataclass(frozen=True)
class Completed:
    """The attempt ended: `result_json` (JSON text of the return value) or `error`, never both."""

    key: Hashable
    started_at: datetime
    duration_s: float
    result_json: str | None
    error: ErrorInfo | None


PoolEvent = Started | Progress | Completed


class Pool(Protocol):
    """Runs attempts with at most `size` at once; see the module docstring for the event contract."""

    kind: str
    size: int

    def start(self) -> None: ...

    def submit(self, attempt: Attempt) -> None:
        """Queue `attempt`; never blocks. It runs when a slot is free."""
        ...

    def take_queued(self, predicate: Callable[[Attempt], bool] | None = None) -> list[Attempt]:
        """Remove and return the attempts not started yet (all, or those matching `predicate`)."""
        ...

    def running(self) -> int: ...

    def cancel(self, task_id: str, attempt: int) -> bool:
        """Stop attempt `attempt` of `task_id` if it runs here: the process pool kills its child (its
        `Completed` says `Cancelled`), the thread and asyncio pools set its cooperative flag
        (`taskq.current().cancelled`). False when it does not run here."""
        ...

    def queued(self) -> int: ...

    def stop(self, timeout_s: float) -> None:
        """No new starts; running attempts get `timeout_s` to finish, then are killed or abandoned.

        A killed or abandoned attempt still gets its `Completed` (WorkerLost, kind "lost"). Attempts
        not started stay queued: take them back with `take_queued`. Process pool children have
        exited when this returns.
        """
        ...

    def failure(self) -> BaseException | None:
        """The error that killed an internal thread of the pool, if one died unexpectedly."""
        ...
