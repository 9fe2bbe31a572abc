"""The thread pool: `size` task threads in the worker process, for I/O-bound code that releases the GIL.

Built by `make_pool("thread", ...)`. What its time limit can and cannot stop: at the deadline a
watchdog raises `taskq.SoftTimeLimitExceeded` (a `TaskTimeout`) inside the task's thread
(`PyThreadState_SetAsyncExc`). Python code
is interrupted at its next bytecode, and an `async def` task is cancelled on its event loop
(`asyncio.timeout`). A thread blocked in C (`time.sleep`, a socket read, a long C extension call)
is NOT interrupted until that call returns. If the thread has not stopped `kill_grace_s` after the
deadline, the attempt is reported as timed out, the thread is abandoned (it keeps running; its late
result and progress are discarded) and a fresh thread takes its slot, so the pool keeps its size.
An abandoned attempt can therefore overlap its retry: use the process pool when that matters.
Exactly one `Completed` is emitted per attempt, whoever finishes first.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from taskq.context import SoftTimeLimitExceeded, TaskContext, TaskTimeout, running
from taskq.registry import TaskSpec, import_task_modules, lookup
from taskq.worker.pools.base import Attempt, Completed, ErrorInfo, PoolEvent, Progress, Started
from taskq.worker.pools.outcome import call_sync, encode_result, error_info, lost_error, timeout_error
from taskq.worker.pools.pending import PendingIntake

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.25
WATCH_INTERVAL_S = 0.05


def raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Schedule `exc_type` in the thread (None clears a pending one)."""
    target = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target)


@dataclass
class _Run:
    attempt: Attempt
    thread_id: int
    started_at: datetime
    start: float
    deadline: float
    signalled: bool = False
    in_loop: bool = False
    done: bool = False
    abandoned: bool = False
    context: TaskContext | None = None


class ThreadPool(PendingIntake):
    """See the module docstring. Thread-safe."""

    kind = "thread"

    def __init__(
        self,
        *,
        size: int,
        events: queue.Queue[PoolEvent],
        task_modules: Sequence[str] = (),
        kill_grace_s: float | None = None,
    ) -> None:
        self._init_intake(size, events, task_modules, kill_grace_s)
        self._idle = threading.Condition(self._lock)
        self._runs: dict[int, _Run] = {}
        self._threads: list[threading.Thread] = []
        self._spawned = 0
        self._watchdog = threading.Thread(target=self._guard(self._watch), name="taskq-thread-pool-watchdog", daemon=True)
        self.abandoned_threads = 0

    # -- Pool protocol ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        import_task_modules(self._task_modules)
        for _ in range(self.size):
            self._spawn()
        self._watchdog.start()

    def running(self) -> int:
        with self._lock:
            return len(self._runs)

    def stop(self, timeout_s: float) -> None:
        """No new starts; wait up to `timeout_s` for running attempts, then abandon them (Completed: WorkerLost)."""
        self._stopping.set()
        self._pending.close()
        deadline = time.monotonic() + max(0.0, timeout_s)
        left_behind: list[_Run] = []
        with self._idle:
            while self._runs and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(min(left, 0.1))
            for run in self._runs.values():
                run.done = True
                run.abandoned = True
                left_behind.append(run)
            self._runs.clear()
        for run in left_behind:
            message = "the pool stopped before the task finished; its thread was abandoned"
            self._complete(run, None, lost_error(message))
        if self._watchdog.is_alive():
            self._watchdog.join(1.0)
        for thread in list(self._threads):
            if thread.is_alive():
                thread.join(0.5)

    def cancel(self, task_id: str, attempt: int) -> bool:
        """Cooperative: set the attempt's `taskq.current().cancelled` flag; the task decides when to stop."""
        with self._lock:
            for run in self._runs.values():
                if run.attempt.task_id == task_id and run.attempt.attempt == attempt and run.context is not None:
                    run.context.request_cancel()
                    return True
        return False

    # -- internals -------------------------------------------------------------------------------

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - reported through failure() to the runtime's supervisor
                log.exception("thread pool thread %s died", threading.current_thread().name)
                if self._failure is None:
                    self._failure = exc

        return guarded

    def _spawn(self) -> None:
        self._spawned += 1
        thread = threading.Thread(target=self._guard(self._serve), name=f"taskq-task-{self._spawned}", daemon=True)
        self._threads = [known for known in self._threads if known.is_alive()] + [thread]
        thread.start()

    def _serve(self) -> None:
        while True:
            try:
                attempt = self._pending.get(IDLE_POLL_S)
                if attempt is None:
                    if self._stopping.is_set():
                        return
                    continue
                if self._run(attempt):
                    return  # abandoned after a timeout: a replacement thread serves now
            except TaskTimeout:
                continue  # a time limit landing after its attempt was settled; nothing is left to do

    def _run(self, attempt: Attempt) -> bool:
        """Run one attempt in this thread; True when the thread was abandoned meanwhile."""
        me = threading.get_ident()
        started_at = datetime.now(UTC)
        start = time.monotonic()
        run = _Run(attempt, me, started_at, start, start + attempt.timeout_s)
        self._events.put(Started(attempt.key, started_at))
        with self._lock:
            self._runs[me] = run
        context = TaskContext(
            attempt.task_id, attempt.name, attempt.attempt, attempt.queue, started_at + timedelta(seconds=attempt.timeout_s)
        )
        run.context = context

        def report(fraction: float, message: str | None, at: datetime) -> None:
            if not run.done:
                self._events.put(Progress(attempt.key, fraction, message, at))

        def entering_loop() -> None:
            run.in_loop = True

        spec: TaskSpec | None = None
        value: Any = None
        failure: BaseException | None = None
        try:
            try:
                spec = lookup(attempt.name)
                with running(context, report):
                    value = call_sync(
                        spec.function, attempt.args, attempt.kwargs, async_timeout_s=attempt.timeout_s, on_loop=entering_loop
                    )
            except BaseException as exc:  # noqa: BLE001 - whatever the task raised is its outcome
                failure = exc
        except TaskTimeout as exc:  # the time limit landed inside the handler above
            failure = exc
        if not self._settle(me, run):
            return run.abandoned
        error: ErrorInfo | None
        if run.signalled or isinstance(failure, TaskTimeout):  # even if the task caught the signal and returned
            result_json, error = None, timeout_error(attempt.timeout_s)
        elif failure is None:
            result_json, error = encode_result(value)
        else:
            result_json, error = None, error_info(failure, spec)
        self._complete(run, result_json, error)
        return False

    def _settle(self, me: int, run: _Run) -> bool:
        """Mark `run` finished by its thread; True if the thread got there first (it then reports)."""
        while True:
            try:
                with self._idle:
                    if run.signalled:
                        raise_in_thread(me, None)  # a time limit not delivered yet must not hit the next attempt
                    first = not run.done
                    run.done = True
                    if self._runs.get(me) is run:
                        del self._runs[me]
                    self._idle.notify_all()
                return first
            except TaskTimeout:
                continue

    def _complete(self, run: _Run, result_json: str | None, error: ErrorInfo | None) -> None:
        duration = time.monotonic() - run.start
        self._events.put(Completed(run.attempt.key, run.started_at, duration, result_json, error))

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            now = time.monotonic()
            abandoned: list[_Run] = []
            with self._idle:
                for thread_id, run in list(self._runs.items()):
                    grace = self._grace(run.attempt)
                    if not run.signalled and not run.in_loop and now >= run.deadline:
                        run.signalled = True
                        raise_in_thread(thread_id, SoftTimeLimitExceeded)
                    elif now >= run.deadline + grace:
                        run.done = True
                        run.abandoned = True
                        del self._runs[thread_id]
                        abandoned.append(run)
                if abandoned:
                    self._idle.notify_all()
            for run in abandoned:
                self.abandoned_threads += 1
                if not self._stopping.is_set():
                    self._spawn()
                detail = (
                    f"its thread did not stop within {self._grace(run.attempt):g} s and was abandoned (it may still be running)"
                )
                self._complete(run, None, timeout_error(run.attempt.timeout_s, detail))
