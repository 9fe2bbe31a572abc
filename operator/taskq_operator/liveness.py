"""Is the scaler alive? The age of its last completed tick, against a stall limit.

The scaler (`taskq_operator.scaler.Scaler.tick_once`) marks every tick that completed; the liveness
probe handler in `taskq_operator.handlers` (served by kopf on `taskq-operator --health-port` at
`/healthz`) reports the age and fails once it exceeds `stall_after_s`, so Kubernetes restarts an
operator whose tick hangs (a blocked read, a dead thread) even though its event loop still answers.
Before the first tick completes, the age counts from start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_STALL_AFTER_S = 60.0
"""Well above a normal tick (milliseconds to a few seconds, bounded by the adapters' 3-5 s timeouts)."""


class TickStalled(Exception):
    """The last completed tick is older than the stall limit (the message says how old)."""


@dataclass
class TickHealth:
    """When the last tick completed, and how many have; written and read on the event loop."""

    stall_after_s: float = DEFAULT_STALL_AFTER_S
    clock: Callable[[], float] = time.monotonic
    started_at: float = field(default=-1.0)
    last_completed_at: float | None = None
    completed: int = 0

    def __post_init__(self) -> None:
        if self.started_at < 0:
            self.started_at = self.clock()

    def tick_completed(self) -> None:
        self.last_completed_at = self.clock()
        self.completed += 1

    def age_s(self) -> float:
        """Seconds since the last completed tick (since start-up when none has completed)."""
        since = self.last_completed_at if self.last_completed_at is not None else self.started_at
        return max(0.0, self.clock() - since)

    def report(self) -> dict[str, float | int]:
        """The probe's figures; raises `TickStalled` when the tick has stalled."""
        age = self.age_s()
        if age > self.stall_after_s:
            what = "no scaler tick completed" if self.last_completed_at is None else "the last scaler tick completed"
            raise TickStalled(f"{what} {age:.1f} s ago (limit {self.stall_after_s:g} s)")
        return {"last_tick_age_s": round(age, 3), "ticks": self.completed}
