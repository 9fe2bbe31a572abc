"""The scale-down stabilization history as annotation text, so that it survives an operator restart (pure).

Only what can still decide a scale-down is kept: recommendations inside the down window, each higher
than every later one (a lower, older one can never be the window's highest again). Times are wall-clock
epoch seconds, rounded up (later, so a restart can only hold longer, never shorter). The last entry is
the current recommendation and carries no time: it was current when last written, so it is read back as
seen at the moment of reading (conservative again); the text therefore changes only when the
recommendation does, not every tick. Recommendations at or below minReplicas are left out (they can
never hold a scale-down), so an idle TaskQueue's text is empty. Example: `1764640800=8,1764640830=5,3`.

The scaler (`taskq_operator.scaler`) writes it to the worker Deployment's `taskq.io/scale-down-history`
annotation (with the scale patch when there is one) and reads it back the first time it handles a
TaskQueue; the up window (0 s by default) is not kept. Tested in `tests/unit/operator/test_operator_history.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ANNOTATION = "taskq.io/scale-down-history"
MAX_ENTRIES = 64


def compact(recommendations: Sequence[tuple[float, int]], now: float, window_s: float) -> tuple[tuple[float, int], ...]:
    """The entries inside the window that are higher than every later one (the last one always stays)."""
    kept: list[tuple[float, int]] = []
    for t, r in reversed([(t, r) for t, r in recommendations if now - t <= window_s]):
        if not kept or r > kept[-1][1]:
            kept.append((t, r))
    if len(kept) > MAX_ENTRIES:  # keep the current one and the oldest (highest) ones
        kept = kept[:1] + kept[-(MAX_ENTRIES - 1) :]
    return tuple(reversed(kept))


def encode(recommendations: Sequence[tuple[float, int]], now: float, window_s: float, wall_offset: float, floor: int = 0) -> str:
    """Annotation text for `recommendations` (clock times; `wall_offset` turns them into epoch seconds).

    Entries at or below `floor` (minReplicas) can never hold a scale-down and are left out, so an idle
    TaskQueue's text is empty.
    """
    if all(r <= floor for _, r in recommendations):
        return ""  # the same text compacting would give, without the work (most TaskQueues, every tick)
    entries = compact(recommendations, now, window_s)
    parts = [f"{math.ceil(t + wall_offset)}={r}" for t, r in entries[:-1] if r > floor]
    if entries and entries[-1][1] > floor:
        parts.append(str(entries[-1][1]))
    return ",".join(parts)


def decode(text: str | None, now: float, wall_offset: float) -> tuple[tuple[float, int], ...]:
    """Clock-time entries from annotation text; a timeless (last) entry is taken as seen `now`. Bad text: none."""
    if not text:
        return ()
    entries: list[tuple[float, int]] = []
    parts = text.split(",")
    try:
        for i, part in enumerate(parts):
            epoch, sep, value = part.partition("=")
            if sep:
                entries.append((min(float(epoch) - wall_offset, now), int(value)))
            elif i == len(parts) - 1:
                entries.append((now, int(epoch)))
            else:
                return ()
    except ValueError:
        return ()
    if any(r < 0 or t != t for t, r in entries) or len(entries) > MAX_ENTRIES:
        return ()
    return tuple(entries)
