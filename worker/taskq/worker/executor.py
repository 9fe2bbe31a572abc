"""Task execution threads with a hard per-task timeout.

The consumer submits `Job`s; `concurrency` threads run them and hand each `Outcome` to a callback
(the committer). A watchdog thread enforces deadlines: at a task's deadline the attempt is reported
as failed with `TaskTimeout` at once, and the thread running it gets a `TaskTimeout` raised inside it
(`PyThreadState_SetAsyncExc`). Python code is interrupted at its next bytecode; a blocking C call
(a long `time.sleep`, a socket read) is interrupted only when it returns. A thread that does not
stop is abandoned (its late result is discarded) and a fresh thread takes its place, so the worker
keeps its concurrency.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskq.core.message import TaskMessage


class TaskTimeout(Exception):
    """A task ran past its hard timeout."""


@dataclass
class Job:
    """One attempt to run: the decoded message, the function, and who to tell about the outcome."""

    message: TaskMessage
    function: Callable[..., Any]
    timeout_s: float
    token: Any  # the consumer's handle for the delivery; passed through untouched
    started_at: float = 0.0  # monotonic
    started_wall: Any = None
    deadline: float = 0.0
    reported: bool = False
    thread_id: int = 0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: a value, or an error; `duration_s` is wall time of the attempt."""

    job: Job
    value: Any = None
    error: BaseException | None = None
    duration_s: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.error is None


@dataclass
class _Slot:
    job: Job
    abandoned: bool = False


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else ctypes.c_void_p(0))


class Executor:
    """A fixed pool of task threads plus a deadline watchdog."""

    def __init__(
        self,
        concurrency: int,
        *,
        on_start: Callable[[Job], None],
        on_outcome: Callable[[Outcome], None],
        watchdog_interval_s: float = 0.05,
    ) -> None:
        self._concurrency = concurrency
        self._on_start = on_start
        self._on_outcome = on_outcome
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: dict[int, _Slot] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._watchdog_interval_s = watchdog_interval_s
        self._watchdog = threading.Thread(target=self._watch, name="taskq-watchdog", daemon=True)
        self.abandoned_threads = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self._concurrency):
            self._spawn()
        self._watchdog.start()

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"taskq-task-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Let the threads exit after their current job (queued jobs should be drained first)."""
        self._stopping.set()
        for _ in range(self._concurrency):
            self._queue.put(None)

    # -- work -----------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def drain_queued(self) -> list[Job]:
        """Take back every job not started yet (for requeueing on shutdown or a lost connection)."""
        taken: list[Job] = []
        kept_sentinels = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                kept_sentinels += 1
            else:
                taken.append(item)
        for _ in range(kept_sentinels):
            self._queue.put(None)
        return taken

    def discard_queued(self, predicate: Callable[[Job], bool]) -> list[Job]:
        """Remove queued jobs matching `predicate` (e.g. of a lost channel); keep the rest in order."""
        taken = self.drain_queued()
        dropped = [job for job in taken if predicate(job)]
        for job in taken:
            if not predicate(job):
                self._queue.put(job)
        return dropped

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def busy(self) -> bool:
        """Whether any job is running or waiting for a thread."""
        return self.running_count() > 0 or self._queue.qsize() > 0

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no job is running (queued jobs not counted); True if that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    # -- threads --------------------------------------------------------------------------------

    def _serve(self) -> None:
        me = threading.get_ident()
        while True:
            try:
                job = self._queue.get()
                if job is None:
                    return
                if self._run(me, job):
                    return  # this thread was abandoned after a timeout: a replacement serves now
            except TaskTimeout:
                # A timeout raised a moment after its task had already returned; the watchdog has
                # reported the outcome, so there is nothing left to do for it.
                continue

    def _run(self, me: int, job: Job) -> bool:
        slot = _Slot(job)
        job.thread_id = me
        job.started_at = time.monotonic()
        job.deadline = job.started_at + job.timeout_s
        with self._lock:
            self._running[me] = slot
        self._on_start(job)
        value: Any = None
        error: BaseException | None = None
        try:
            value = job.function(*job.message.args, **job.message.kwargs)
        except BaseException as exc:  # noqa: BLE001 - a task may raise anything; it is recorded, not propagated
            error = exc
        duration = time.monotonic() - job.started_at
        # Disarm: after this block the watchdog can no longer target this thread for this job.
        while True:
            try:
                with self._lock:
                    self._running.pop(me, None)
                    already_reported = job.reported
                    job.reported = True
                    if already_reported:
                        _raise_in_thread(me, None)  # clear a timeout still pending for this thread
                    self._idle.notify_all()
                break
            except TaskTimeout:
                continue
        if not already_reported:
            self._on_outcome(Outcome(job, value, error, duration))
        return slot.abandoned

    def _watch(self) -> None:
        while not self._stopping.is_set():
            time.sleep(self._watchdog_interval_s)
            now = time.monotonic()
            expired: list[Job] = []
            replacements = 0
            with self._lock:
                for thread_id, slot in list(self._running.items()):
                    job = slot.job
                    if job.reported or now < job.deadline:
                        continue
                    job.reported = True
                    slot.abandoned = True
                    del self._running[thread_id]
                    _raise_in_thread(thread_id, TaskTimeout)
                    expired.append(job)
                    replacements += 1
                    self.abandoned_threads += 1
                if expired:
                    self._idle.notify_all()
            for _ in range(replacements):
                self._spawn()
            for job in expired:
                error = TaskTimeout(f"task {job.message.name!r} exceeded its timeout of {job.timeout_s:g} s")
                self._on_outcome(Outcome(job, None, error, now - job.started_at))
