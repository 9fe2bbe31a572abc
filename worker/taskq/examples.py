"""Example tasks shipped with taskq: `sleep`, `echo`, `fail`, `cpu`, `noop`, `flaky`, and for the pools'
fault tests `exit`, `allocate`, `ledger`, `journal`, `progress`, `async_sleep`, `unstorable`, `reject`, `picky`,
`stubborn`, `context`, `bad_exception`, `segfault`, `chatty`, and `cooperative` (stops when cancelled).

Imported by a worker with `TASKQ_TASK_MODULES=taskq.examples`; used by the demo, the tests and the
benchmark. Every task is deterministic given its arguments.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from taskq.context import Reject, SoftTimeLimitExceeded, current, report_progress
from taskq.registry import task

SLEEP_SLICE_S = 0.05


class ExampleFailure(RuntimeError):
    """The error the `fail` and `flaky` tasks raise on purpose."""


@task(name="sleep")
def sleep(seconds: float = 1.0) -> float:
    """Sleep `seconds` in short slices, so a timeout can interrupt it between slices; return the time slept."""
    start = time.monotonic()
    deadline = start + max(0.0, float(seconds))
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(SLEEP_SLICE_S, left))
    return round(time.monotonic() - start, 3)


@task(name="echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Return the arguments it was given."""
    return {"args": list(args), "kwargs": kwargs}


@task(name="noop")
def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing (the benchmark's unit of work)."""
    return None


@task(name="fail")
def fail(message: str = "this task always fails") -> None:
    """Always raise `ExampleFailure(message)`."""
    raise ExampleFailure(message)


@task(name="cpu")
def cpu(n: int = 200_000) -> int:
    """Burn CPU: the number of primes below `n` (sieve), capped at ten million."""
    limit = max(2, min(int(n), 10_000_000))
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, limit, i)))
    return int(sum(sieve))


@task(name="flaky")
def flaky(counter_path: str, failures: int = 1) -> int:
    """Fail the first `failures` times it runs (counted in the file `counter_path`), then succeed.

    Returns how many times it has run. The counter file makes the count survive across worker
    processes, so retries through the delay queue can be observed.
    """
    runs = 0
    if os.path.exists(counter_path):
        with open(counter_path, encoding="utf-8") as handle:
            runs = int(handle.read().strip() or 0)
    runs += 1
    with open(counter_path, "w", encoding="utf-8") as handle:
        handle.write(str(runs))
    if runs <= failures:
        raise ExampleFailure(f"flaky failure {runs} of {failures}")
    return runs


@task(name="exit")
def exit_process(code: int = 1) -> None:
    """End the process running it at once with `os._exit(code)` (no cleanup): a lost worker child."""
    os._exit(int(code))


@task(name="segfault")
def segfault() -> None:
    """Crash the process running it with SIGSEGV (a C read of address 0): a lost worker child."""
    import ctypes

    ctypes.string_at(0)


_kept: list[bytes] = []


@task(name="allocate")
def allocate(mib: int = 100, hold_s: float = 1.0, keep: bool = False) -> int:
    """Allocate `mib` MiB (every page written, so it is resident), hold it `hold_s` seconds, return `mib`.

    With `keep`, the block stays referenced after the task returns (a leak that lives as long as
    the process running it).
    """
    block = b"\x01" * (int(mib) * 2**20)
    if keep:
        _kept.append(block)
    time.sleep(max(0.0, float(hold_s)))
    return len(block) // 2**20


@task(name="ledger")
def ledger(path: str, seconds: float = 0.0) -> int:
    """Sleep `seconds` (one plain `time.sleep`), then append "task_id attempt pid monotonic_start monotonic_end".

    One line per execution that ran to its end, so a test can count executions and see that two
    attempts never overlapped. Returns the pid.
    """
    context = current()
    start = time.monotonic()
    time.sleep(max(0.0, float(seconds)))
    end = time.monotonic()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{context.id} {context.attempt} {os.getpid()} {start:.6f} {end:.6f}\n")
    return os.getpid()


EXECUTIONS_COLLECTION = "executions"


@task(name="journal")
def journal(seconds: float = 1.0) -> str:
    """Sleep `seconds` (like `sleep`), then insert one record of this execution into the worker's own store.

    The record goes to the collection `executions` of the store the worker uses (`TASKQ_MONGODB_URI`,
    `TASKQ_DATABASE`): task id, attempt, worker id, pid, start and end (UTC). A ledger of executions
    that ran to their end and outlives the worker pod, so a test can count executions across pods
    (a paused node's worker finishing late). Returns the worker id.
    """
    import pymongo

    from taskq.settings import Settings

    context = current()
    settings = Settings()
    started = datetime.now(UTC)
    sleep(seconds)
    record = {
        "task_id": context.id,
        "attempt": context.attempt,
        "worker": settings.worker_id,
        "pid": os.getpid(),
        "started": started,
        "ended": datetime.now(UTC),
    }
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=10_000)
    try:
        client[settings.database][EXECUTIONS_COLLECTION].insert_one(record)
    finally:
        client.close()
    return settings.worker_id


@task(name="progress")
def progress(steps: int = 4, interval_s: float = 0.0) -> int:
    """Report progress `steps` times (1/steps, 2/steps, ... 1.0), `interval_s` apart; return how many were sent."""
    count = max(1, int(steps))
    sent = 0
    for step in range(1, count + 1):
        if step > 1:
            time.sleep(max(0.0, float(interval_s)))
        sent += report_progress(step / count, f"step {step} of {count}")
    return sent


@task(name="chatty")
def chatty(seconds: float = 1.0) -> int:
    """Report progress 1.0 (which always passes the rate limit) in a tight loop for `seconds`; return the count.

    Stands for a task that floods its progress channel.
    """
    deadline = time.monotonic() + max(0.0, float(seconds))
    count = 0
    while time.monotonic() < deadline:
        report_progress(1.0, "still done")
        count += 1
    return count


@task(name="async_sleep")
async def async_sleep(seconds: float = 0.1, value: Any = "slept") -> Any:
    """Await `asyncio.sleep(seconds)`, then return `value`."""
    await asyncio.sleep(max(0.0, float(seconds)))
    return value


UNSTORABLE_KINDS = ("circular", "big_int", "surrogate", "nested_list")


@task(name="unstorable")
def unstorable(kind: str = "circular") -> Any:
    """Return a value a result store cannot hold: "circular" (a dict containing itself), "big_int" (2**64),
    "surrogate" (a lone surrogate "\\udcff") or "nested_list" ([[1, 2]]).

    Only "circular" fails JSON encoding; the others pass it and are refused by the store's rules.
    """
    if kind == "circular":
        value: dict[str, Any] = {}
        value["self"] = value
        return value
    if kind == "big_int":
        return 2**64
    if kind == "surrogate":
        return "\udcff"
    if kind == "nested_list":
        return [[1, 2]]
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(UNSTORABLE_KINDS)}")


@task(name="reject")
def reject(message: str = "rejected on purpose") -> None:
    """Always raise `taskq.Reject(message)`: fail at once, never retried."""
    raise Reject(message)


PICKY_ERRORS: dict[str, type[Exception]] = {
    "os": OSError,
    "missing": FileNotFoundError,
    "value": ValueError,
    "example": ExampleFailure,
}


@task(name="picky", retry_for=(OSError, ExampleFailure), dont_retry_for=(FileNotFoundError,))
def picky(error: str = "os") -> None:
    """Raise the error named by `error`, to show retry rules: "os" (OSError: retried), "missing"
    (FileNotFoundError: listed in dont_retry_for), "value" (ValueError: not in retry_for), "example"
    (ExampleFailure: retried)."""
    raise PICKY_ERRORS[error](f"picky raised {error}")


@task(name="stubborn")
def stubborn(seconds: float = 30.0, path: str | None = None) -> str:
    """Sleep `seconds`, ignoring `taskq.SoftTimeLimitExceeded` (like code stuck in C that a soft limit cannot stop).

    If `path` is given, append "done" to it when the sleep ends, so a test can see whether it ever did.
    """
    deadline = time.monotonic() + max(0.0, float(seconds))
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            continue
    if path is not None:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("done\n")
    return "done"


@task(name="cooperative")
def cooperative(seconds: float = 30.0) -> str:
    """Work in 10 ms steps for `seconds`, stopping early once the attempt is cancelled.

    What a thread- or asyncio-pool task does to honour `Client.cancel`: check `taskq.current().cancelled`
    between steps (the process pool kills the child instead, so there it never sees the flag).
    """
    deadline = time.monotonic() + max(0.0, float(seconds))
    while time.monotonic() < deadline:
        if current().cancelled:
            return "stopped: cancelled"
        time.sleep(0.01)
    return "done"


@task(name="context")
def context() -> dict[str, Any]:
    """Return what `taskq.current()` says about this attempt (the deadline as ISO text)."""
    now = current()
    return {"id": now.id, "name": now.name, "attempt": now.attempt, "queue": now.queue, "deadline": now.deadline.isoformat()}


class HostileError(Exception):
    """An exception that is hard to report: its `__str__` raises and its argument cannot be pickled."""

    def __str__(self) -> str:
        raise RuntimeError("HostileError.__str__ refuses")


@task(name="bad_exception")
def bad_exception() -> None:
    """Raise `HostileError` carrying an unpicklable argument (a lock) and a lone surrogate in its notes."""
    error = HostileError(threading.Lock(), "\udcff")
    error.add_note("note with a lone surrogate: \udcff")
    raise error
