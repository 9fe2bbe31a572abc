"""The asyncio pool: one event loop in one thread of the worker, at most `size` attempts at once.

Built by `make_pool("asyncio", ...)`, for `async def` tasks doing I/O. Each attempt runs as an
asyncio task under `asyncio.timeout(timeout_s)`: at the deadline the coroutine is cancelled at its
current `await`. What it cannot stop: a coroutine that blocks the loop (sync sleep, CPU work) stalls
every attempt until it yields, and one that swallows the cancellation is abandoned `kill_grace_s`
after the deadline (reported as timed out; it may keep running). A plain (sync) function submitted
here runs in a helper thread (like `asyncio.to_thread`, but a daemon thread, so a stuck call cannot
hold up the worker's exit) under the same timeout: at the deadline the attempt is reported timed out
and the thread gets `SoftTimeLimitExceeded` as in the thread pool (Python code stops at its next
bytecode; a blocking C call runs on until it returns; its result is discarded).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
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
from taskq.worker.pools.outcome import encode_result, error_info, lost_error, timeout_error
from taskq.worker.pools.pending import PendingIntake
from taskq.worker.pools.thread import raise_in_thread

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


@dataclass
class _Run:
    attempt: Attempt
    started_at: datetime
    start: float
    inner: asyncio.Task[Any] | None = None
    in_thread: bool = False
    done: bool = False
    context: TaskContext | None = None


def _settle_future(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


@dataclass
class _Helper:
    """The state shared by a helper thread and the coroutine awaiting it (guarded by `lock`)."""

    lock: threading.Lock
    ident: int = 0
    finished: bool = False
    signalled: bool = False
    cancelled: bool = False


async def run_in_daemon_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`asyncio.to_thread` on a fresh daemon thread (context copied), so an unstoppable call never blocks exit.

    When the awaiting coroutine is cancelled (its time limit, or the pool stopping), the thread gets
    `SoftTimeLimitExceeded` raised inside it, as in the thread pool: Python code stops at its next
    bytecode, a blocking C call only when it returns. Its result is discarded either way.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()
    helper = _Helper(threading.Lock())

    def target() -> None:
        with helper.lock:
            if helper.cancelled:
                return
            helper.ident = threading.get_ident()
        value: Any = None
        error: BaseException | None = None
        try:
            try:
                value = context.run(function, *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                error = exc
        except SoftTimeLimitExceeded as exc:  # the time limit landed inside the handler above
            error = exc
        while True:
            try:
                with helper.lock:
                    if helper.signalled:
                        raise_in_thread(helper.ident, None)  # drop a time limit not delivered yet
                    helper.finished = True
                break
            except SoftTimeLimitExceeded:
                continue
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this result any more
            loop.call_soon_threadsafe(_settle_future, future, value, error)

    threading.Thread(target=target, name="taskq-asyncio-sync-task", daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        with helper.lock:
            helper.cancelled = True
            if helper.ident and not helper.finished:
                helper.signalled = True
                raise_in_thread(helper.ident, SoftTimeLimitExceeded)
        raise


class AsyncioPool(PendingIntake):
    """See the module docstring. `submit`/`take_queued`/counters/`stop` may be called from any thread."""

    kind = "asyncio"

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="taskq-asyncio-pool", daemon=True)

    # -- Pool protocol ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        import_task_modules(self._task_modules)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the asyncio pool's event loop did not start")

    def submit(self, attempt: Attempt) -> None:
        super().submit(attempt)
        self._poke()  # the loop waits on its own event, not on the pending queue

    def running(self) -> int:
        with self._lock:
            return len(self._runs)

    def stop(self, timeout_s: float) -> None:
        """No new starts; wait up to `timeout_s` for running attempts, then cancel them (Completed: WorkerLost)."""
        self._stopping.set()
        self._pending.close()
        self._poke()
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._idle:
            while self._runs and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(min(left, 0.1))
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self._abandon_all(), loop).result(5.0)
            except (RuntimeError, TimeoutError, asyncio.CancelledError, concurrent.futures.CancelledError):
                # The loop ended (or cancelled the request) while stopping: nothing is left to abandon there.
                log.warning("the asyncio pool's loop did not take the stop request")
        self._poke()
        if self._thread.is_alive():
            self._thread.join(5.0)

    # -- the loop thread ----------------------------------------------------------------------------

    def cancel(self, task_id: str, attempt: int) -> bool:
        """Cooperative: set the attempt's `taskq.current().cancelled` flag; the coroutine decides when to stop."""
        with self._lock:
            for run in self._runs.values():
                if run.attempt.task_id == task_id and run.attempt.attempt == attempt and run.context is not None:
                    run.context.request_cancel()
                    return True
        return False

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(wake.set)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported through failure() to the runtime's supervisor
            log.exception("the asyncio pool's loop died")
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ready.set()
        tasks: set[asyncio.Task[None]] = set()
        while not self._stopping.is_set():
            while len(tasks) < self.size:
                attempt = self._pending.get(0.0)
                if attempt is None:
                    break
                task = asyncio.create_task(self._run(attempt))
                tasks.add(task)
                task.add_done_callback(self._finished(tasks))
            await self._wake.wait()
            self._wake.clear()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def _finished(self, tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log.error("asyncio pool bookkeeping failed: %r", exc)
                if self._failure is None:
                    self._failure = exc
            assert self._wake is not None
            self._wake.set()

        return done

    async def _run(self, attempt: Attempt) -> None:
        started_at = datetime.now(UTC)
        run = _Run(attempt, started_at, time.monotonic())
        self._events.put(Started(attempt.key, started_at))
        with self._lock:
            self._runs[id(run)] = run
        try:
            run.inner = asyncio.create_task(self._call(run))
            finished, _ = await asyncio.wait({run.inner}, timeout=attempt.timeout_s + self._grace(attempt))
            if run.done:
                return  # settled by stop()
            if not finished:
                run.inner.cancel()
                run.inner.add_done_callback(_ignore_outcome)
                detail = f"the coroutine did not stop within {self._grace(attempt):g} s and was abandoned"
                self._complete(run, None, timeout_error(attempt.timeout_s, detail))
                return
            result_json, error = run.inner.result()
            self._complete(run, result_json, error)
        finally:
            with self._idle:
                self._runs.pop(id(run), None)
                self._idle.notify_all()

    async def _call(self, run: _Run) -> tuple[str | None, ErrorInfo | None]:
        attempt = run.attempt
        deadline = run.started_at + timedelta(seconds=attempt.timeout_s)
        context = TaskContext(attempt.task_id, attempt.name, attempt.attempt, attempt.queue, deadline)
        run.context = context

        def report(fraction: float, message: str | None, at: datetime) -> None:
            if not run.done:
                self._events.put(Progress(attempt.key, fraction, message, at))

        spec: TaskSpec | None = None
        limit = asyncio.timeout(attempt.timeout_s)
        try:
            spec = lookup(attempt.name)
            with running(context, report):
                async with limit:
                    value = await self._invoke(spec, run)
        except TimeoutError as exc:
            if limit.expired():
                return None, self._timeout(run)
            return None, error_info(exc, spec)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - whatever the task raised is its outcome
            if isinstance(exc, TaskTimeout):
                return None, self._timeout(run)
            return None, error_info(exc, spec)
        if limit.expired():  # the coroutine swallowed the cancellation and returned anyway
            return None, self._timeout(run)
        return encode_result(value)

    @staticmethod
    def _timeout(run: _Run) -> ErrorInfo:
        detail = "its thread was interrupted; a blocking C call in it runs on until it returns" if run.in_thread else ""
        return timeout_error(run.attempt.timeout_s, detail)

    @staticmethod
    async def _invoke(spec: TaskSpec, run: _Run) -> Any:
        attempt = run.attempt
        if inspect.iscoroutinefunction(spec.function):
            return await spec.function(*attempt.args, **attempt.kwargs)
        run.in_thread = True
        value = await run_in_daemon_thread(spec.function, *attempt.args, **attempt.kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _abandon_all(self) -> None:
        with self._lock:
            runs = [run for run in self._runs.values() if not run.done]
        for run in runs:
            self._complete(run, None, lost_error("the pool stopped before the task finished; it was cancelled"))
            if run.inner is not None:
                run.inner.cancel()
                run.inner.add_done_callback(_ignore_outcome)

    def _complete(self, run: _Run, result_json: str | None, error: ErrorInfo | None) -> None:
        if run.done:
            return
        run.done = True
        self._events.put(Completed(run.attempt.key, run.started_at, time.monotonic() - run.start, result_json, error))


def _ignore_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"
