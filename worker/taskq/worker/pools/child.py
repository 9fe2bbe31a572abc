"""The process pool's child process: import the task modules, then run attempts from the pipe, one at a time.

Started by `ProcessPool` (forkserver context) with `serve` as its target. Protocol on the pipe:
parent → child: a `Request` tuple or None (exit); child → parent: ("ready", pid) or
("failed", message) once, then per attempt ("started", at), any ("progress", fraction, message, at)
and one ("done", result_json, error, duration_s). The child ignores SIGINT/SIGTERM (the parent owns
shutdown), dies with its forkserver parent (PR_SET_PDEATHSIG), and turns SIGUSR1 into
`SoftTimeLimitExceeded` inside the running task.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from taskq.context import SoftTimeLimitExceeded, TaskContext, running, safe_text
from taskq.registry import TaskSpec, import_task_modules, lookup
from taskq.worker.pools.outcome import MESSAGE_MAX, call_sync, encode_result, error_info

SOFT_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1

# (task_id, name, attempt, queue, args, kwargs, timeout_s): a plain tuple pickles fastest.
Request = tuple[str, str, int, str, list[Any], dict[str, Any], float]


class _SoftLimit:
    """Raises `SoftTimeLimitExceeded` at most once per attempt, and only while a task is running."""

    def __init__(self) -> None:
        self.armed = False
        self.fired = False
        self.timeout_s = 0.0

    def arm(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.fired = False
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.armed and not self.fired:
            self.fired = True
            raise SoftTimeLimitExceeded(f"the task exceeded its time limit of {self.timeout_s:g} s")


class _Channel:
    """The child's end of the pipe; a lock keeps reports from a task's helper threads whole."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.lock:
            self.conn.send(message)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


def serve(conn: Connection, task_modules: list[str]) -> None:
    """The child's main function (the `Process` target)."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = _Channel(conn)
    try:
        import_task_modules(task_modules)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the pool
        channel.send(("failed", safe_text(str(exc), MESSAGE_MAX)))
        return
    soft = _SoftLimit()
    signal.signal(SOFT_SIGNAL, soft.handle)
    channel.send(("ready", os.getpid()))
    while True:
        try:
            request: Request | None = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        try:
            _run(request, channel, soft)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return


def _run(request: Request, channel: _Channel, soft: _SoftLimit) -> None:
    task_id, name, attempt, queue, args, kwargs, timeout_s = request
    started_at = datetime.now(UTC)
    start = time.monotonic()
    channel.send(("started", started_at))
    context = TaskContext(task_id, name, attempt, queue, started_at + timedelta(seconds=timeout_s))

    def report(fraction: float, message: str | None, at: datetime) -> None:
        channel.send(("progress", fraction, message, at))

    spec: TaskSpec | None = None
    try:
        soft.arm(timeout_s)
        try:
            spec = lookup(name)
            with running(context, report):
                value = call_sync(spec.function, args, kwargs)
        finally:
            soft.disarm()
        result_json, error = encode_result(value)
    except BaseException as exc:  # noqa: BLE001 - whatever the task raised is its outcome
        soft.disarm()
        result_json, error = None, error_info(exc, spec)
    channel.send(("done", result_json, error, time.monotonic() - start))
