"""`taskq_operator.bounded.Bounded`: a hanging job costs the others the deadline once, then only itself."""

from __future__ import annotations

import threading
import time

from taskq_operator.bounded import Bounded


def test_a_hanging_key_is_late_then_runs_alone_and_the_others_come_back() -> None:
    release = threading.Event()
    pool: Bounded[str, int] = Bounded(2, "test-bounded", grace_s=0.1)
    jobs = {f"k{i}": (lambda i=i: i) for i in range(10)}
    jobs["hang"] = lambda: int(release.wait(10))
    try:
        started = time.monotonic()
        first = pool.run(jobs, timeout_s=0.3)
        assert 0.3 <= time.monotonic() - started < 1.0
        assert "hang" in first.late and set(first.results) | set(first.late) == set(jobs)

        started = time.monotonic()
        second = pool.run(jobs, timeout_s=0.3)  # the hanging one is still running: late at once, not started again
        assert time.monotonic() - started < 1.0
        assert "hang" in second.late and second.late["hang"] is first.late["hang"]
        assert set(second.results) == set(jobs) - set(second.late)

        release.set()
        first.late["hang"].result(timeout=5)
        third = pool.run(jobs, timeout_s=0.3)
        assert third.late == {} and third.results == {**{f"k{i}": i for i in range(10)}, "hang": 1}
    finally:
        release.set()
        pool.close()


def test_errors_come_back_with_their_key() -> None:
    pool: Bounded[str, int] = Bounded(4, "test-bounded")
    try:
        outcome = pool.run({"ok": lambda: 1, "bad": lambda: 1 // 0}, timeout_s=1)
        assert outcome.results == {"ok": 1} and isinstance(outcome.errors["bad"], ZeroDivisionError)
    finally:
        pool.close()
