"""What a running task can see of its own attempt: `taskq.current()` and `taskq.report_progress()`.

The worker's execution pools (`taskq.worker.pools`) enter `running(...)` around each attempt; the
context travels in a `contextvars.ContextVar`, so it is visible in the task's thread, in a process
pool child, in an asyncio task and in `asyncio.to_thread` helpers (which copy the context). A cancelled
attempt sees `taskq.current().cancelled` turn True (thread and asyncio pools). The
exceptions a task may see or raise on purpose live here too: `TaskTimeout`, `SoftTimeLimitExceeded`
and `Reject`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

from taskq.core.storable import safe_text

PROGRESS_INTERVAL_S = 1.0
PROGRESS_MESSAGE_MAX = 200


class TaskTimeout(Exception):
    """An attempt ran past its time limit (the `error.type` of every timed-out attempt)."""


class SoftTimeLimitExceeded(TaskTimeout):
    """Raised inside a task at its time limit (process pool: by a SIGUSR1 handler) so it can clean up.

    The task has a short grace period after this; a process-pool child that is still running the
    task then is killed.
    """


class Reject(Exception):
    """Raise it in a task to fail the attempt now and never retry it."""


@dataclass(frozen=True)
class TaskContext:
    """The running attempt: task id, registered name, 1-based attempt number, queue, wall-clock deadline (UTC)."""

    id: str
    name: str
    attempt: int
    queue: str
    deadline: datetime
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """Whether this attempt was cancelled (`Client.cancel`) while it runs.

        Cooperative, for the thread and asyncio pools: a task that checks it can stop early (return
        or raise; its outcome is not recorded: the cancel's is). The process pool kills the child
        instead, so there it is never seen True.
        """
        return self._cancel.is_set()

    def request_cancel(self) -> None:
        """Set the flag `cancelled` reads (called by the pool that runs the attempt)."""
        self._cancel.set()


ProgressSink = Callable[[float, "str | None", datetime], None]


@dataclass
class _Active:
    context: TaskContext
    sink: ProgressSink
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_sent: float | None = None
    open: bool = True


_active: ContextVar[_Active | None] = ContextVar("taskq_task_context", default=None)


def current() -> TaskContext:
    """The attempt running in this thread/task; `RuntimeError` outside a task."""
    active = _active.get()
    if active is None or not active.open:
        raise RuntimeError("taskq.current() was called outside a running task")
    return active.context


def report_progress(fraction: float, message: str | None = None) -> bool:
    """Report that the running attempt is `fraction` (0..1) done, with an optional short message.

    At most one report per second per attempt is sent (a report of 1.0 always is); the others are
    dropped. Returns whether this report was sent. `RuntimeError` outside a task, `ValueError` for
    a fraction outside 0..1, `TypeError` for a message that is not a string.
    """
    active = _active.get()
    if active is None or not active.open:
        raise RuntimeError("taskq.report_progress() was called outside a running task")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"progress fraction must be a number, not {type(fraction).__name__}")
    value = float(fraction)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"progress fraction must be between 0 and 1, got {fraction!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress message must be a string or None, not {type(message).__name__}")
    text = None if message is None else safe_text(message, PROGRESS_MESSAGE_MAX)
    now = time.monotonic()
    with active.lock:
        if not active.open:
            return False
        if value < 1.0 and active.last_sent is not None and now - active.last_sent < PROGRESS_INTERVAL_S:
            return False
        active.last_sent = now
    active.sink(value, text, datetime.now(UTC))
    return True


@contextmanager
def running(context: TaskContext, sink: ProgressSink) -> Iterator[None]:
    """Make `context` the current attempt (and `sink` its progress channel) inside the block.

    After the block, anything the task left running (a helper thread holding a copy of the
    context) gets `RuntimeError` from `current()`/`report_progress()`; nothing more is sent.
    """
    active = _Active(context, sink)
    token = _active.set(active)
    try:
        yield
    finally:
        with active.lock:
            active.open = False
        _active.reset(token)
