"""The process pool with real child processes: results, errors, timeouts that kill, lost children, memory, recycling, stop.

No servers: attempts go in, events come out of the pool's queue (always read with timeouts).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pool_support import MODULES, attempt, collect, completions, started_pool

from taskq.worker.pools import Completed, PoolEvent, Progress, Started, make_pool
from taskq.worker.pools.process import ChildStartFailed, ProcessPool


@contextmanager
def process_pool(size: int = 1, **options: Any) -> Iterator[tuple[ProcessPool, queue.Queue[PoolEvent]]]:
    with started_pool("process", size, 5.0, **options) as (pool, events):
        assert isinstance(pool, ProcessPool)
        yield pool, events


def wait_started(events: queue.Queue[PoolEvent], key: Any, timeout_s: float = 30.0) -> Started:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = events.get(timeout=left)
        except queue.Empty:
            break
        assert not isinstance(event, Completed), f"completed before the test expected: {event}"
        if isinstance(event, Started) and event.key == key:
            return event
    raise AssertionError(f"attempt {key!r} did not start within {timeout_s} s")


def gone(pid: int) -> bool:
    """True when `pid` is neither running nor a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(gone(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if not gone(pid)]


def ledger_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_results_errors_and_retry_rules() -> None:
    with process_pool(size=2) as (_, events):
        submitted = {
            "echo": attempt("echo", "echo", 1, "x", k=[1]),
            "none": attempt("none", "noop"),
            "fail": attempt("fail", "fail", "boom"),
            "os": attempt("os", "picky", "os"),
            "missing": attempt("missing", "picky", "missing"),
            "value": attempt("value", "picky", "value"),
            "reject": attempt("reject", "reject", "no thanks"),
            "unknown": attempt("unknown", "no-such-task"),
        }
        for item in submitted.values():
            _.submit(item)
        seen = collect(events, len(submitted))
    done = completions(seen)
    assert json.loads(done["echo"].result_json or "") == {"args": [1, "x"], "kwargs": {"k": [1]}}
    assert done["echo"].error is None and done["echo"].duration_s >= 0
    assert done["none"].result_json == "null"
    errors = {key: event.error for key, event in done.items() if event.error is not None}
    assert errors["fail"].type == "ExampleFailure" and errors["fail"].message == "boom" and errors["fail"].retryable
    assert "ExampleFailure: boom" in errors["fail"].traceback and errors["fail"].kind == "raised"
    assert errors["os"].retryable
    assert not errors["missing"].retryable and errors["missing"].type == "FileNotFoundError"
    assert not errors["value"].retryable
    assert (errors["reject"].type, errors["reject"].kind, errors["reject"].retryable) == ("Reject", "rejected", False)
    assert errors["unknown"].type == "UnknownTask"
    started = {event.key for event in seen if isinstance(event, Started)}
    assert started == set(submitted)


def test_hostile_exception_and_unstorable_results_do_not_hurt_the_pool() -> None:
    with process_pool() as (pool, events):
        for kind in ("circular", "big_int", "surrogate", "nested_list"):
            pool.submit(attempt(kind, "unstorable", kind))
        pool.submit(attempt("hostile", "bad_exception"))
        pool.submit(attempt("after", "echo", "ok"))
        done = completions(collect(events, 6))
    circular = done["circular"].error
    assert circular is not None and (circular.type, circular.kind, circular.retryable) == (
        "UnstorableResult",
        "unstorable",
        False,
    )
    assert "Circular reference" in circular.message and done["circular"].result_json is None
    # JSON can encode these; the runtime's storability rules refuse them later.
    assert done["big_int"].result_json == str(2**64)
    assert done["surrogate"].result_json == '"\\udcff"'
    assert done["nested_list"].result_json == "[[1, 2]]"
    hostile = done["hostile"].error
    assert hostile is not None and hostile.type == "HostileError" and "str() of the exception failed" in hostile.message
    hostile.traceback.encode("utf-8")  # storable text: no lone surrogates left
    assert json.loads(done["after"].result_json or "") == {"args": ["ok"], "kwargs": {}}


def test_async_def_task_is_awaited() -> None:
    with process_pool() as (pool, events):
        pool.submit(attempt("a", "async_sleep", 0.05, {"v": 1}))
        done = completions(collect(events, 1))
    assert json.loads(done["a"].result_json or "") == {"v": 1}


def test_timeout_interrupts_a_blocking_sleep_and_the_retry_starts_after(tmp_path: Path) -> None:
    marks = tmp_path / "ledger.txt"
    with process_pool() as (pool, events):
        pool.submit(attempt("slow", "ledger", str(marks), 30, timeout_s=2.0))
        pool.submit(attempt("retry", "ledger", str(marks), 0, number=2))
        started = time.monotonic()
        seen = collect(events, 1, timeout_s=15)
        completed_at = time.monotonic()
        slow = completions(seen)["slow"]
        assert slow.error is not None and (slow.error.type, slow.error.kind, slow.error.retryable) == (
            "TaskTimeout",
            "timeout",
            True,
        )
        assert 1.8 <= completed_at - started <= 2.0 + 1.0 + 2.0, completed_at - started
        collect(events, 1)
        time.sleep(0.5)
    lines = ledger_lines(marks)
    assert [line[0] for line in lines] == ["task-retry"], "the timed-out attempt must never reach the line after its sleep"
    assert float(lines[0][3]) >= completed_at - 0.05, "the retry started before the timed-out attempt was reported"


def test_a_task_flooding_progress_is_still_stopped_at_its_deadline_with_the_stream_intact() -> None:
    with process_pool(kill_grace_s=1.0) as (pool, events):
        pool.submit(attempt("flood", "chatty", 30, timeout_s=1.0))
        began = time.monotonic()
        seen = collect(events, 1, timeout_s=30)
        elapsed = time.monotonic() - began
        pool.submit(attempt("after", "echo", 1))
        after = completions(collect(events, 1))["after"]
        assert pool.failure() is None
    flood = completions(seen)["flood"]
    assert flood.error is not None and flood.error.type == "TaskTimeout", flood.error
    assert sum(isinstance(event, Progress) for event in seen) > 100
    assert elapsed < 6, elapsed
    assert after.error is None


def test_a_task_that_ignores_the_soft_limit_is_killed_after_the_grace(tmp_path: Path) -> None:
    marker = tmp_path / "stubborn.txt"
    with process_pool(kill_grace_s=1.0) as (pool, events):
        [pid] = pool.child_pids()
        pool.submit(attempt("stubborn", "stubborn", 4, str(marker), timeout_s=1.0))
        started = time.monotonic()
        done = completions(collect(events, 1, timeout_s=15))["stubborn"]
        elapsed = time.monotonic() - started
        assert gone(pid), "Completed was emitted while the child that ran the task still existed"
        assert done.error is not None and done.error.type == "TaskTimeout" and "killed" in done.error.message
        assert 1.8 <= elapsed <= 4.0, elapsed
        pool.submit(attempt("next", "echo", 1))
        after = completions(collect(events, 1))["next"]
        assert after.error is None
        assert pool.child_pids() and pool.child_pids()[0] != pid
        time.sleep(max(0.0, 4.5 - (time.monotonic() - started)))
    assert not marker.exists(), "the killed attempt finished its sleep anyway"


def test_start_returns_with_every_child_ready() -> None:
    with process_pool(size=2) as (pool, _):
        assert len(pool.child_pids()) == 2


def test_exit_is_worker_lost_and_the_pool_keeps_serving(tmp_path: Path) -> None:
    marks = tmp_path / "ledger.txt"
    with process_pool(size=2) as (pool, events):
        pool.submit(attempt("exit", "exit", 1))
        lost = completions(collect(events, 1))["exit"]
        for index in range(20):
            pool.submit(attempt(index, "ledger", str(marks), 0))
        done = completions(collect(events, 20))
        assert pool.failure() is None
    assert lost.error is not None and (lost.error.type, lost.error.kind) == ("WorkerLost", "lost")
    assert lost.error.message == "child process exited with code 1" and lost.error.retryable
    assert all(event.error is None for event in done.values())
    assert len(ledger_lines(marks)) == 20


def test_a_segfault_is_worker_lost_naming_the_signal() -> None:
    with process_pool() as (pool, events):
        pool.submit(attempt("crash", "segfault"))
        pool.submit(attempt("after", "echo", 1))
        done = completions(collect(events, 2))
    crash = done["crash"].error
    assert crash is not None and (crash.type, crash.message) == ("WorkerLost", "child process killed by signal SIGSEGV")
    assert done["after"].error is None


def test_child_killed_from_outside_is_worker_lost_naming_the_signal(tmp_path: Path) -> None:
    with process_pool() as (pool, events):
        pool.submit(attempt("victim", "ledger", str(tmp_path / "x"), 30, timeout_s=60))
        wait_started(events, "victim")
        [pid] = pool.child_pids()
        os.kill(pid, signal.SIGKILL)
        lost = completions(collect(events, 1, timeout_s=10))["victim"]
        pool.submit(attempt("after", "echo", 2))
        after = completions(collect(events, 1))["after"]
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert lost.error.message == "child process killed by signal SIGKILL"
    assert after.error is None


def test_memory_over_the_limit_kills_the_child_and_the_pool_keeps_serving() -> None:
    with process_pool(max_memory_per_child_mb=200) as (pool, events):
        [pid] = pool.child_pids()
        pool.submit(attempt("hog", "allocate", 400, 10))
        started = time.monotonic()
        hog = completions(collect(events, 1, timeout_s=20))["hog"]
        elapsed = time.monotonic() - started
        pool.submit(attempt("small", "allocate", 10, 0))
        small = completions(collect(events, 1))["small"]
        assert pool.child_pids()[0] != pid
    assert hog.error is not None and (hog.error.type, hog.error.kind, hog.error.retryable) == (
        "MemoryLimitExceeded",
        "memory",
        True,
    )
    assert elapsed < 8, "the child was not killed while it held the memory"
    assert small.result_json == "10"


def test_a_child_left_over_the_memory_limit_after_a_task_is_recycled() -> None:
    events: queue.Queue[PoolEvent] = queue.Queue()
    # Sampling every 30 s: only the check after each task can see the leak.
    pool = ProcessPool(size=1, events=events, task_modules=MODULES, max_memory_per_child_mb=200, memory_sample_s=30)
    pool.start()
    try:
        [pid] = pool.child_pids()
        pool.submit(attempt("first", "allocate", 100, 0, keep=True))
        assert completions(collect(events, 1))["first"].result_json == "100"
        assert pool.child_pids() == [pid], "under the limit: the child stays"
        pool.submit(attempt("second", "allocate", 150, 0, keep=True))
        assert completions(collect(events, 1))["second"].result_json == "150"
        deadline = time.monotonic() + 10
        while pool.child_pids() in ([], [pid]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.child_pids() != [pid] and wait_gone([pid]) == [], "the leaking child was not recycled"
        pool.submit(attempt("third", "allocate", 100, 0, keep=True))
        assert completions(collect(events, 1))["third"].result_json == "100"
    finally:
        pool.stop(5.0)


def test_max_tasks_per_child_recycles_children(tmp_path: Path) -> None:
    with process_pool(max_tasks_per_child=2) as (pool, events):
        for index in range(6):
            pool.submit(attempt(index, "ledger", str(tmp_path / "l"), 0))
        done = completions(collect(events, 6))
    pids = [json.loads(done[index].result_json or "0") for index in range(6)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
    assert len(set(pids)) == 3


def test_current_and_progress_in_a_child() -> None:
    with process_pool() as (pool, events):
        pool.submit(attempt("ctx", "context", timeout_s=60, number=3))
        pool.submit(attempt("burst", "progress", 5, 0))
        pool.submit(attempt("paced", "progress", 3, 0.6))
        seen = collect(events, 3)
    done = completions(seen)
    ctx = json.loads(done["ctx"].result_json or "")
    started = next(event for event in seen if isinstance(event, Started) and event.key == "ctx")
    assert (ctx["id"], ctx["name"], ctx["attempt"], ctx["queue"]) == ("task-ctx", "context", 3, "q")
    assert started.started_at.tzinfo is not None
    assert abs((datetime.fromisoformat(ctx["deadline"]) - started.started_at).total_seconds() - 60) < 1
    burst = [event for event in seen if isinstance(event, Progress) and event.key == "burst"]
    assert [event.fraction for event in burst] == [0.2, 1.0], "one report per second, and 1.0 always passes"
    assert done["burst"].result_json == "2" and burst[0].message == "step 1 of 5"
    paced = [event.fraction for event in seen if isinstance(event, Progress) and event.key == "paced"]
    assert paced[0] == pytest.approx(1 / 3) and paced[-1] == 1.0 and len(paced) in (2, 3)


def test_take_queued_returns_attempts_that_never_start(tmp_path: Path) -> None:
    marks = tmp_path / "ledger.txt"
    with process_pool() as (pool, events):
        pool.submit(attempt(0, "ledger", str(marks), 1.0))
        for index in range(1, 6):
            pool.submit(attempt(index, "ledger", str(marks), 0))
        wait_started(events, 0)
        assert pool.running() == 1 and pool.queued() == 5
        odd = pool.take_queued(lambda item: int(str(item.key)) % 2 == 1)
        rest = pool.take_queued()
        assert [item.key for item in odd] == [1, 3, 5] and [item.key for item in rest] == [2, 4]
        assert pool.queued() == 0
        collect(events, 1)
        time.sleep(0.3)
        assert events.empty()
    assert [line[0] for line in ledger_lines(marks)] == ["task-0"]


def test_stop_leaves_no_child_alive_even_with_a_task_running(tmp_path: Path) -> None:
    events: queue.Queue[PoolEvent] = queue.Queue()
    pool = make_pool("process", size=2, events=events, task_modules=MODULES)
    assert isinstance(pool, ProcessPool)
    pool.start()
    pool.submit(attempt("long", "ledger", str(tmp_path / "l"), 30, timeout_s=60))
    wait_started(events, "long")
    pids = pool.child_pids()
    assert len(pids) == 2
    began = time.monotonic()
    pool.stop(1.0)
    assert time.monotonic() - began < 10
    assert wait_gone(pids) == [], "children survived stop()"
    lost = completions(collect(events, 1, timeout_s=5))["long"]
    assert lost.error is not None and lost.error.kind == "lost"
    with pytest.raises(RuntimeError):
        pool.submit(attempt("late", "noop"))


def test_stop_lets_the_running_task_finish_within_its_budget(tmp_path: Path) -> None:
    events: queue.Queue[PoolEvent] = queue.Queue()
    pool = make_pool("process", size=1, events=events, task_modules=MODULES)
    assert isinstance(pool, ProcessPool)
    pool.start()
    pool.submit(attempt("short", "ledger", str(tmp_path / "l"), 0.5))
    wait_started(events, "short")
    pids = pool.child_pids()
    pool.stop(10.0)
    assert completions(collect(events, 1, timeout_s=1))["short"].error is None
    assert wait_gone(pids) == []


def test_children_ignore_sigterm_and_sigint() -> None:
    with process_pool() as (pool, events):
        [pid] = pool.child_pids()
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        pool.submit(attempt("still", "echo", 1))
        done = completions(collect(events, 1))["still"]
        assert done.error is None and pool.child_pids() == [pid]


def test_a_child_that_cannot_import_its_modules_fails_the_start() -> None:
    events: queue.Queue[PoolEvent] = queue.Queue()
    pool = make_pool("process", size=1, events=events, task_modules=["taskq.no_such_module_here"])
    with pytest.raises(ChildStartFailed, match="no_such_module_here"):
        pool.start()
    assert pool.failure() is not None


PARENT_SCRIPT = """
import os, queue, sys, time
from taskq.worker.pools import Attempt, make_pool

def main() -> None:
    events = queue.Queue()
    pool = make_pool("process", size=2, events=events, task_modules=["taskq.examples"])
    pool.start()
    pool.submit(Attempt("k", "t", "ledger", 1, "q", [sys.argv[2], 30], {}, 60.0))
    events.get(timeout=30)  # Started
    print(" ".join(str(pid) for pid in pool.child_pids()), flush=True)
    if sys.argv[1] == "hang":
        time.sleep(60)
    # "exit": leave without stop(), with a task running in a child that ignores SIGTERM

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_no_child_outlives_its_worker(tmp_path: Path, how: str) -> None:
    import subprocess

    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    mode = "hang" if how == "sigkill" else "exit"
    parent = subprocess.Popen([sys.executable, str(script), mode, str(tmp_path / "l")], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2, line
        if how == "sigkill":
            parent.kill()
        assert parent.wait(timeout=20) in (0, -signal.SIGKILL)
        assert wait_gone(pids, timeout_s=10) == [], f"children outlived the worker ({how})"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)


def test_the_forkserver_preloads_the_taskq_modules_the_main_module_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from taskq.worker.pools import process as process_module
    from taskq.worker.pools.process import forkserver_preload

    fake_main = types.ModuleType("__main__")
    fake_main.__dict__.update(main=forkserver_preload, json=json, pytest=pytest, process=process_module)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    preload = forkserver_preload(["taskq.examples"])
    assert preload == ["taskq.worker.pools.child", "taskq.examples", "taskq.worker.pools.process"]
