"""Example tasks shipped with taskq: `sleep`, `echo`, `fail`, `cpu`, `noop`, `flaky`.

Imported by a worker with `TASKQ_TASK_MODULES=taskq.examples`; used by the demo, the tests and the
benchmark.
"""

from __future__ import annotations

import os
import time
from typing import Any

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
