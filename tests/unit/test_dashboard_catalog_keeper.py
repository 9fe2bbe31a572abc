"""The dashboard's catalog keeper (taskq.http.dashboard.catalog) with scans that are plain functions: the first
load waits at most its budget and then sees the scan's progress, later loads do not wait, a saved catalog is served
(marked restored) while the first scan runs, a complete scan is saved, a failed scan keeps the last catalog."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from taskq.core.catalog import Summary
from taskq.errors import StoreUnavailable
from taskq.http.dashboard.catalog import CatalogKeeper

AT = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def _slow_scan(release: threading.Event, rows: int = 3) -> Callable[[Callable[[int], None]], Iterator[Summary]]:
    def scan(seen: Callable[[int], None]) -> Iterator[Summary]:
        seen(1)
        assert release.wait(10)
        for i in range(rows):
            yield (f"t{i}", "queued", "q", "n", AT)

    return scan


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_first_load_waits_its_budget_then_shows_progress_and_later_loads_do_not_wait() -> None:
    release = threading.Event()
    keeper = CatalogKeeper(_slow_scan(release))
    began = time.monotonic()
    view = keeper.get(wait_s=0.3)
    assert 0.25 <= time.monotonic() - began < 2.0
    assert view.catalog is None and view.scanning_since is not None and view.scanned == 1
    began = time.monotonic()
    assert keeper.get(wait_s=0.3).catalog is None and time.monotonic() - began < 0.1
    release.set()
    _until(lambda: keeper.view().catalog is not None)
    view = keeper.get()
    assert view.catalog is not None and len(view.catalog) == 3 and not view.restored and view.took_s is not None


def test_a_saved_catalog_is_served_while_the_first_scan_runs_and_the_scan_is_saved() -> None:
    release = threading.Event()
    saved: list[int] = []
    keeper = CatalogKeeper(
        _slow_scan(release, rows=5),
        restore=lambda: ([("old", "succeeded", "q", "n", AT)], AT, 12.5),
        save=lambda summaries, taken_at, took_s: saved.append(len(summaries)),
    )
    view = keeper.get(wait_s=2.0)
    assert view.catalog is not None and view.catalog.ids == ["old"] and view.restored
    assert view.taken_at == AT and view.took_s == 12.5
    release.set()
    _until(lambda: not keeper.view().restored and saved == [5])


def test_a_failed_scan_keeps_the_last_catalog_and_says_why() -> None:
    calls: list[int] = []

    def scan(seen: Callable[[int], None]) -> Iterator[Summary]:
        calls.append(1)
        if len(calls) > 1:
            raise StoreUnavailable("down")
        yield ("a", "queued", "q", "n", AT)

    keeper = CatalogKeeper(scan, max_age_s=0.0)
    assert keeper.get(wait_s=5.0).catalog is not None
    _until(lambda: keeper.view().scanning_since is None)
    time.sleep(0.01)
    keeper.get()
    _until(lambda: keeper.view().problem == "store unavailable")
    assert keeper.view().catalog is not None and keeper.view().catalog.ids == ["a"]  # type: ignore[union-attr]
