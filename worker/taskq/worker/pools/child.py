"""The process pool's child process: import the task modules, then run attempts from the pipe, one at a time.

Started by `ProcessPool` (forkserver context) with `serve` as its target. Protocol on the pipe:
parent → child: a `Request` tuple or None (exit); child → parent: ("ready", pid) or
("failed", message) once, then per attempt ("started", at), any ("progress", fraction, message, at)
and one ("done", result_json, error, duration_s). The child ignores SIGINT/SIGTERM (the parent owns
shutdown), kills itself as soon as the worker process is gone (a thread waits on a pidfd of the
worker, so even a task that is still running cannot outlive it), and turns SIGUSR1 into
`SoftTimeLimitExceeded` inside the running task.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from taskq.context import SoftTimeLimitExceeded, TaskContext, running
from taskq.core.storable import safe_text
from taskq.registry import TaskSpec, import_task_modules, lookup
from taskq.worker.pools.outcome import MESSAGE_MAX, call_sync, encode_result, error_info

SOFT_SIGNAL = signal.SIGUSR1

# (task_id, name, attempt, queue, args, kwargs, timeout_s): a plain tuple pickles fastest.
Request = tuple[str, str, int, str, list[Any], dict[str, Any], float]


class _SoftLimit:
    """Raises `SoftTimeLimitExceeded` at most once per attempt, and only while a task is running.

    While the main thread writes to the pipe the raise is deferred until the write is complete, so
    a report is never cut in half (which would corrupt the stream the parent reads).
    """

    def __init__(self) -> None:
        self.armed = False
        self.fired = False
        self.timeout_s = 0.0
        self.deferring = False
        self.deferred = False

    def arm(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.fired = False
        self.deferred = False
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring:
            self.deferred = True
            return
        self._fire()

    def raise_deferred(self) -> None:
        if self.deferred:
            self.deferred = False
            self._fire()

    def _fire(self) -> None:
        if self.armed and not self.fired:
            self.fired = True
            raise SoftTimeLimitExceeded(f"the task exceeded its time limit of {self.timeout_s:g} s")


class _Channel:
    """The child's end of the pipe; a lock keeps reports from a task's helper threads whole."""

    def __init__(self, conn: Connection, soft: _SoftLimit) -> None:
        self.conn = conn
        self.soft = soft
        self.lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        in_main = threading.current_thread() is threading.main_thread()
        with self.lock:
            if in_main:
                self.soft.deferring = True
            try:
                self.conn.send(message)
            finally:
                if in_main:
                    self.soft.deferring = False
        if in_main:
            self.soft.raise_deferred()


def _die_with(worker_pid: int) -> None:
    """Start a thread that SIGKILLs this process when `worker_pid` exits (the forkserver is not the worker)."""
    try:
        pidfd = os.pidfd_open(worker_pid)
    except ProcessLookupError:
        os._exit(1)  # the worker is already gone
    except (AttributeError, OSError):
        return  # no pidfd (old kernel): the pipe's EOF still ends an idle child

    def watch() -> None:
        # Keep process signals (the soft limit) for the main thread, where they interrupt the task.
        signal.pthread_sigmask(signal.SIG_BLOCK, {SOFT_SIGNAL, signal.SIGINT, signal.SIGTERM})
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="taskq-child-lifeline", daemon=True).start()


def serve(conn: Connection, task_modules: list[str], worker_pid: int) -> None:
    """The child's main function (the `Process` target)."""
    _die_with(worker_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    soft = _SoftLimit()
    channel = _Channel(conn, soft)
    try:
        import_task_modules(task_modules)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the pool
        channel.send(("failed", safe_text(str(exc), MESSAGE_MAX)))
        return
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
