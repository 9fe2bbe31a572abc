"""When the operator sweeps a store's outbox: at most once per interval per store (pure, no I/O).

The sweep's selection is not a query by `_id`, so on FerretDB it scans the outbox collection; running
it every ~30 s per store, whatever the TaskQueues' poll intervals, keeps that cost bounded. Called by
`taskq_operator.sweep`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

SWEEP_INTERVAL_S = 30.0
K = TypeVar("K", bound=Hashable)


def due_stores(last_run: Mapping[K, float], stores: Iterable[K], now: float, interval_s: float = SWEEP_INTERVAL_S) -> list[K]:
    """The stores never swept, or last swept `interval_s` or more before `now` (in the order given, once each)."""
    due: list[K] = []
    for store in stores:
        last = last_run.get(store)
        if store not in due and (last is None or now - last >= interval_s):
            due.append(store)
    return due
