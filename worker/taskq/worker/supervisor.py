"""Supervision of the worker's long-lived threads: one dies, the whole worker says so and stops.

Every stage thread (committer, heartbeat, health server) is started through `Supervisor.start`; the
connection stage reports its own unexpected errors and polls the pool's `failure()`. The first
failure is kept: `/livez` fails at once, the connection stage stops consuming without acking what is
in flight (the broker redelivers it), and `taskq-worker` exits non-zero after a short drain, so
Kubernetes restarts it instead of keeping a zombie with green probes. Used by `taskq.worker.main`.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

from taskq.core.storable import safe_text
from taskq.worker.logs import JsonLog


class Supervisor:
    """Starts supervised daemon threads and remembers the first stage that failed."""

    def __init__(self, log: JsonLog) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._failed = threading.Event()
        self.failed_stage: str | None = None
        self.failure: str | None = None

    @property
    def failed(self) -> bool:
        return self._failed.is_set()

    def wait_failed(self, timeout_s: float) -> bool:
        return self._failed.wait(timeout_s)

    def fail(self, stage: str, exc: BaseException) -> None:
        """Record that `stage` died of `exc` (the first failure wins; later ones are logged only)."""
        text = safe_text(f"{type(exc).__name__}: {exc}", 500)
        with self._lock:
            first = self.failed_stage is None
            if first:
                self.failed_stage, self.failure = stage, text
        detail = safe_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:], 3000)
        self._log.event("worker.stage_failed", "error", stage=stage, error=text, traceback=detail, first=first)
        self._failed.set()

    def start(self, stage: str, target: Callable[[], None]) -> threading.Thread:
        """Run `target` in a daemon thread named after `stage`; an exception escaping it fails the worker."""

        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - whatever kills a stage must be reported, never lost
                self.fail(stage, exc)

        thread = threading.Thread(target=run, name=f"taskq-{stage}", daemon=True)
        thread.start()
        return thread
