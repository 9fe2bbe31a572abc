"""The process pool (default): `size` child processes, one supervising thread per child in the worker.

Built by `make_pool("process", ...)`; the worker runtime submits attempts and reads events. Each
slot thread owns one child (multiprocessing "forkserver" context, so replacing a child from the
multi-threaded worker never forks it), sends it one attempt at a time over a pipe and waits for its
reports with bounded polls. It enforces, from outside the child:

- the time limit: SIGUSR1 at `timeout_s` (the child raises `SoftTimeLimitExceeded` in the task),
  SIGKILL if it has not reported `kill_grace_s` later; `Completed` (TaskTimeout) is emitted only
  once the child has reported or has been killed and reaped, so a retry never overlaps its attempt;
- child death (exit, signal, OOM killer): `Completed` (WorkerLost) naming the exit code or signal;
- `max_memory_per_child_mb`: the child's RSS is sampled every ~100 ms while it runs; over the limit
  it is killed (MemoryLimitExceeded), and a child left over the limit after a task is recycled;
- `max_tasks_per_child`: the child is replaced after that many attempts;
- a cancel (`cancel`): the child running the attempt is SIGKILLed at once; `Completed` (Cancelled)
  follows once it is reaped.

A lost child is replaced at once and the pool keeps serving. As in any multiprocessing program
that does not fork directly, each child imports the worker's main module as `__mp_main__`: it must
not start work at import time (the `taskq-worker` script and `python -m` entry points are guarded).

Children ignore SIGINT/SIGTERM; `stop` lets them finish, then kills what is left. An exit hook
kills children of pools never stopped, and each child kills itself when the worker process is gone
(even SIGKILLed), so none outlives it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import ModuleType
from typing import Any

from taskq.core.storable import safe_text
from taskq.worker.pools import child as child_main
from taskq.worker.pools.base import Attempt, Completed, ErrorInfo, PoolEvent, Progress, Started
from taskq.worker.pools.memory import rss_bytes
from taskq.worker.pools.oom import OOM_NOTE, OomWatch
from taskq.worker.pools.outcome import MESSAGE_MAX, cancelled_error, lost_error, memory_error, timeout_error
from taskq.worker.pools.pending import PendingIntake

log = logging.getLogger(__name__)

MEMORY_SAMPLE_S = 0.1
IDLE_POLL_S = 0.25
START_TIMEOUT_S = 60.0
START_ATTEMPTS = 3
EXIT_WAIT_S = 5.0
REAP_WAIT_S = 30.0

_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


class ChildStartFailed(RuntimeError):
    """A child process could not start (its task modules failed to import, or it died at once)."""


def describe_exit(exitcode: int | None) -> str:
    """The reason a child is gone: "child process exited with code N" or "... killed by signal SIGKILL"."""
    if exitcode is None:
        return "child process stopped responding"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"child process killed by signal {name}"
    return f"child process exited with code {exitcode}"


def forkserver_preload(task_modules: Sequence[str]) -> list[str]:
    """What the forkserver imports once, so that starting a child costs a fork, not imports.

    The child code and the task modules, plus the modules the worker's main module took names from:
    every child re-runs the main module as `__mp_main__`, and for the `taskq-worker` console script
    (`from taskq.worker.main import main`) that would import the whole runtime again (~150 ms a
    child). With those modules preloaded it only re-binds names. (Listing "__main__" itself does not
    work: Python 3.11's forkserver never receives the main path.)
    """
    preload = [child_main.__name__, *task_modules]
    main = sys.modules.get("__main__")
    for key, value in list(vars(main).items()) if main is not None else []:
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        # Only taskq's own modules: they are known to import cleanly in a fresh process.
        if key.startswith("__") or not isinstance(name, str) or not (name == "taskq" or name.startswith("taskq.")):
            continue
        if name in sys.modules and name not in preload:
            preload.append(name)
    return preload


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection
    pid: int
    tasks: int = 0

    def kill(self) -> None:
        # Only while the forkserver has not reported the exit: until then the pid cannot be reused.
        if self.process.exitcode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def reap(self, wait_s: float) -> bool:
        """Wait for the process to be gone; True when it is."""
        self.process.join(wait_s)
        return self.process.exitcode is not None

    def close(self, wait_s: float) -> None:
        """Ask an idle child to exit; kill it if it does not within `wait_s`; always reaps."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        if not self.reap(wait_s):
            self.kill()
            self.reap(REAP_WAIT_S)
        self.conn.close()


@dataclass
class _Running:
    attempt: Attempt
    sent_wall: datetime
    started_at: datetime | None = None
    soft_at: float | None = None
    cancelled: bool = False


class ProcessPool(PendingIntake):
    """See the module docstring. Thread-safe: `submit`/`take_queued`/counters may be called from any thread."""

    kind = "process"

    def __init__(
        self,
        *,
        size: int,
        events: queue.Queue[PoolEvent],
        task_modules: Sequence[str],
        max_tasks_per_child: int = 0,
        max_memory_per_child_mb: int = 0,
        kill_grace_s: float | None = None,
        memory_sample_s: float = MEMORY_SAMPLE_S,
    ) -> None:
        self._init_intake(size, events, task_modules, kill_grace_s)
        self._max_tasks = max(0, max_tasks_per_child)
        self._max_memory_mb = max(0, max_memory_per_child_mb)
        self._memory_sample_s = memory_sample_s
        self._context = multiprocessing.get_context("forkserver")
        self._running: dict[int, _Running] = {}
        self._children: dict[int, _Child] = {}
        self._kill_now = threading.Event()
        self._oom = OomWatch()
        self._threads = [
            threading.Thread(target=self._slot_main, args=(slot,), name=f"taskq-pool-slot-{slot}", daemon=True)
            for slot in range(size)
        ]

    # -- Pool protocol ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the children and return once each has imported the task modules.

        Raises `ChildStartFailed` (after stopping the pool) when they cannot, e.g. a task module
        that fails to import.
        """
        if self._started:
            return
        self._started = True
        self._context.set_forkserver_preload(forkserver_preload(self._task_modules))
        _live_pools.add(self)
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S * START_ATTEMPTS
        while time.monotonic() < deadline and self._failure is None:
            with self._lock:
                if len(self._children) == self.size:
                    return
            time.sleep(0.01)
        failure = self._failure or ChildStartFailed("the process pool's children did not start in time")
        self.stop(0.0)
        raise failure

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def stop(self, timeout_s: float) -> None:
        if not self._started:
            self._stopping.set()
            self._pending.close()
            return
        self._stopping.set()
        self._pending.close()
        deadline = time.monotonic() + max(0.0, timeout_s)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._kill_now.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(REAP_WAIT_S)
        self._kill_all()
        _live_pools.discard(self)

    def cancel(self, task_id: str, attempt: int) -> bool:
        """SIGKILL the child running that attempt; its slot thread reports `Cancelled` once it is reaped."""
        with self._lock:
            for slot, run in self._running.items():
                if run.attempt.task_id == task_id and run.attempt.attempt == attempt and not run.cancelled:
                    child = self._children.get(slot)
                    if child is None:
                        return False
                    run.cancelled = True
                    child.kill()  # under the lock: the slot thread has not reaped this child yet
                    return True
        return False

    # -- introspection (metrics, tests) ----------------------------------------------------------

    def child_pids(self) -> list[int]:
        """The pids of the live children, by slot."""
        with self._lock:
            return [child.pid for _, child in sorted(self._children.items())]

    # -- slot threads ----------------------------------------------------------------------------

    def _emit(self, event: PoolEvent) -> None:
        self._events.put(event)

    def _slot_main(self, slot: int) -> None:
        try:
            self._serve(slot)
        except BaseException as exc:  # noqa: BLE001 - reported through failure() to the runtime's supervisor
            log.exception("process pool slot %d died", slot)
            if self._failure is None:
                self._failure = exc
        finally:
            with self._lock:
                child = self._children.pop(slot, None)
            if child is not None:
                child.close(EXIT_WAIT_S)

    def _serve(self, slot: int) -> None:
        while not self._stopping.is_set():
            child = self._slot_child(slot)
            if child is None:
                return  # stopping while a child was starting
            attempt = self._pending.get(IDLE_POLL_S)
            if attempt is None:
                if child.process.exitcode is not None:
                    self._drop(slot, child)  # died while idle: replaced on the next round
                continue
            child = self._run(slot, child, attempt)
            if child is None:
                continue
            child.tasks += 1
            if self._worn_out(child):
                self._drop(slot, child)

    def _worn_out(self, child: _Child) -> bool:
        """Whether an idle child should be replaced: it ran `max_tasks_per_child` tasks or is over the memory limit."""
        if self._max_tasks and child.tasks >= self._max_tasks:
            return True
        return bool(self._max_memory_mb) and (rss_bytes(child.pid) or 0) > self._max_memory_mb * 2**20

    def _slot_child(self, slot: int) -> _Child | None:
        with self._lock:
            child = self._children.get(slot)
        if child is None:
            child = self._spawn(slot)
            if child is not None:
                with self._lock:
                    self._children[slot] = child
        return child

    def _drop(self, slot: int, child: _Child) -> None:
        """Take `child` out of its slot and make sure it is gone (asked to exit if idle, else killed)."""
        with self._lock:
            if self._children.get(slot) is child:
                del self._children[slot]
        child.close(EXIT_WAIT_S)

    def _spawn(self, slot: int) -> _Child | None:
        last = "no attempt made"
        for _ in range(START_ATTEMPTS):
            if self._stopping.is_set():
                return None
            parent_conn, child_conn = self._context.Pipe(duplex=True)
            process = self._context.Process(
                target=child_main.serve,
                args=(child_conn, self._task_modules, os.getpid()),
                name=f"taskq-pool-child-{slot}",
                daemon=True,
            )
            process.start()
            child_conn.close()
            assert process.pid is not None
            child = _Child(process, parent_conn, process.pid)
            message: Any = None
            give_up = time.monotonic() + START_TIMEOUT_S
            try:
                while not self._kill_now.is_set() and (left := give_up - time.monotonic()) > 0:
                    if parent_conn.poll(min(left, IDLE_POLL_S)):
                        message = parent_conn.recv()
                        break
            except (EOFError, OSError):
                message = None
            if isinstance(message, tuple) and message and message[0] == "ready":
                return child
            child.kill()
            child.reap(REAP_WAIT_S)
            parent_conn.close()
            if isinstance(message, tuple) and message and message[0] == "failed":
                raise ChildStartFailed(f"a process pool child could not import its task modules: {message[1]}")
            last = describe_exit(process.exitcode)
        raise ChildStartFailed(f"a process pool child did not start ({START_ATTEMPTS} tries; last: {last})")

    def _run(self, slot: int, child: _Child, attempt: Attempt) -> _Child | None:
        """Run one attempt and emit its events; returns the slot's child if it is still usable."""
        run = _Running(attempt, datetime.now(UTC))
        request: child_main.Request = (
            attempt.task_id,
            attempt.name,
            attempt.attempt,
            attempt.queue,
            attempt.args,
            attempt.kwargs,
            attempt.timeout_s,
        )
        with self._lock:
            self._running[slot] = run
        try:
            for tries_left in (1, 0):
                try:
                    child.conn.send(request)
                    break
                except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
                    message = safe_text(f"the task's arguments cannot be sent to the child process: {exc}", MESSAGE_MAX)
                    self._complete(run, 0.0, None, ErrorInfo(type(exc).__name__, message, "", "rejected", False))
                    return child
                except (OSError, ValueError):
                    # The child died while idle, so the attempt never reached it: once, use a fresh child.
                    self._drop(slot, child)
                    fresh = self._slot_child(slot) if tries_left else None
                    if fresh is None:
                        self._complete(run, 0.0, None, self._lost(child.process.exitcode))
                        return None
                    child = fresh
            if self._wait(child, run):
                return child
            self._drop(slot, child)
            return None
        finally:
            with self._lock:
                self._running.pop(slot, None)

    def _lost(self, exitcode: int | None) -> ErrorInfo:
        """A child that died on its own: why, naming the OOM killer when it acted in this container meanwhile."""
        reason = describe_exit(exitcode)
        if exitcode == -signal.SIGKILL and self._oom.acted():
            reason = f"{reason}: {OOM_NOTE}"
        return lost_error(reason)

    def _wait(self, child: _Child, run: _Running) -> bool:
        """Follow the child's reports for `run` until it is done or the child is gone."""
        attempt = run.attempt
        sent = time.monotonic()
        deadline = sent + attempt.timeout_s
        grace = self._grace(attempt)
        limit = self._max_memory_mb * 2**20
        next_sample = sent + self._memory_sample_s
        while True:
            now = time.monotonic()
            if self._kill_now.is_set():
                self._kill(child)
                self._complete(
                    run, now - sent, None, lost_error("the pool stopped before the task finished; the child was killed")
                )
                return False
            wake = deadline if run.soft_at is None else run.soft_at + grace
            if limit:
                wake = min(wake, next_sample)
            wait = max(0.0, min(wake, now + IDLE_POLL_S) - now)
            try:
                ready = child.conn.poll(wait)
                message = child.conn.recv() if ready else None
            except (EOFError, OSError):
                self._kill(child)
                error = cancelled_error() if run.cancelled else self._lost(child.process.exitcode)
                self._complete(run, time.monotonic() - sent, None, error)
                return False
            except Exception as exc:  # noqa: BLE001 - an unreadable message: the stream cannot be trusted any more
                self._kill(child)
                reason = f"child process sent an unreadable message ({type(exc).__name__}) and was killed"
                self._complete(run, time.monotonic() - sent, None, lost_error(reason))
                return False
            if message is not None and self._on_message(run, message, attempt.timeout_s):
                return True
            # The limits are checked after every wake-up, so no stream of reports can postpone them.
            now = time.monotonic()
            if limit and now >= next_sample:
                next_sample = now + self._memory_sample_s
                rss = rss_bytes(child.pid) or 0
                if rss > limit:
                    self._kill(child)
                    self._complete(run, now - sent, None, memory_error(self._max_memory_mb, rss))
                    return False
            if run.soft_at is None and now >= deadline:
                run.soft_at = now
                if child.process.exitcode is None:  # else the next poll sees the pipe's EOF
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, child_main.SOFT_SIGNAL)
            elif run.soft_at is not None and now >= run.soft_at + grace:
                self._kill(child)
                detail = f"the child process did not stop within {grace:g} s of the soft limit and was killed"
                self._complete(run, time.monotonic() - sent, None, timeout_error(attempt.timeout_s, detail))
                return False

    def _on_message(self, run: _Running, message: Any, timeout_s: float) -> bool:
        tag = message[0] if isinstance(message, tuple) and message else None
        if tag == "started":
            run.started_at = message[1]
            self._emit(Started(run.attempt.key, message[1]))
            return False
        if tag == "progress":
            self._emit(Progress(run.attempt.key, message[1], message[2], message[3]))
            return False
        if tag == "done":
            _, result_json, error, duration = message
            if run.soft_at is not None:
                detail = "the task was interrupted at the soft limit"
                if error is not None and error.type != "TaskTimeout":
                    detail += f" and ended with {error.type}"
                result_json, error = None, timeout_error(timeout_s, detail)
            self._complete(run, duration, result_json, error)
            return True
        log.warning("process pool child sent an unexpected message: %r", tag)
        return False

    def _kill(self, child: _Child) -> None:
        """SIGKILL the child and wait until it is reaped (the task is then certainly not running)."""
        child.kill()
        if not child.reap(REAP_WAIT_S):
            log.error("process pool child %d did not exit %g s after SIGKILL", child.pid, REAP_WAIT_S)
        child.conn.close()

    def _complete(self, run: _Running, duration_s: float, result_json: str | None, error: ErrorInfo | None) -> None:
        if run.started_at is None:
            run.started_at = run.sent_wall
            self._emit(Started(run.attempt.key, run.sent_wall))
        self._emit(Completed(run.attempt.key, run.started_at, duration_s, result_json, error))

    def _kill_all(self) -> None:
        with self._lock:
            children = list(self._children.values())
            self._children.clear()
        for child in children:
            child.kill()
            child.reap(EXIT_WAIT_S)


@atexit.register
def _kill_leftover_children() -> None:
    # Runs before multiprocessing's own exit hook, which would wait forever on children that ignore SIGTERM.
    for pool in list(_live_pools):
        pool._stopping.set()
        pool._kill_now.set()
        pool._kill_all()
