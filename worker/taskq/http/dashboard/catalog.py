"""The dashboard's task catalog (`taskq.core.catalog`), rebuilt by a background scan while pages are open.

Called by `taskq.http.dashboard.routes`: each page load asks `CatalogKeeper.get`, which returns the
last complete catalog at once and, when it is older than `max_age_s`, starts one background scan
(`taskq.store.dashboard_reads.scan_list_fields`; never two at a time, and not sooner after the last
one than it took, so scanning uses at most half of the time). Only when there is no catalog yet
(the first load after a start) does a page wait, at most `wait_s`; after that it shows how far the
scan got ("computing") instead of hanging. Nothing is scanned while no page is open. A complete
scan is saved in the store at most every `SAVE_EVERY_S` (`save`), and a starting process first reads
the saved one back (`restore`, by `_id`: seconds instead of a scan), shown with its own, older time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from taskq.core.catalog import Catalog, Summary
from taskq.core.message import utcnow
from taskq.errors import TaskqError

log = logging.getLogger("taskq.http.dashboard")
Scan = Callable[[Callable[[int], None]], Iterable[Summary]]
Restore = Callable[[], tuple[list[Summary], datetime, float] | None]
Save = Callable[[list[Summary], datetime, float], object]
SAVE_EVERY_S = 60.0


@dataclass(frozen=True)
class CatalogView:
    """The newest complete catalog (None before the first scan ends), when its scan began and took, and a scan in progress."""

    catalog: Catalog | None
    taken_at: datetime | None
    took_s: float | None
    scanning_since: datetime | None
    scanned: int
    problem: str | None
    restored: bool = False


class CatalogKeeper:
    """One catalog per API process, refreshed on demand in one background thread at a time."""

    def __init__(self, scan: Scan, *, max_age_s: float = 2.0, restore: Restore | None = None, save: Save | None = None) -> None:
        self._scan = scan
        self._restore = restore
        self._save = save
        self._saved_at = float("-inf")
        self._restored = False
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._catalog: Catalog | None = None
        self._taken_at: datetime | None = None
        self._took_s: float | None = None
        self._ended = 0.0
        self._scanning_since: datetime | None = None
        self._began = 0.0
        self._scanned = 0
        self._problem: str | None = None

    def get(self, wait_s: float = 0.0) -> CatalogView:
        """The current view; starts a scan when due; with no catalog yet, waits until `wait_s` after the scan began."""
        with self._lock:
            now = time.monotonic()
            due = self._catalog is None or now - self._ended > max(self.max_age_s, self._took_s or 0.0)
            if due and self._scanning_since is None:
                self._scanning_since = utcnow()
                self._began = now
                self._scanned = 0
                if self._catalog is None:
                    self._ready.clear()
                threading.Thread(target=self._run, name="taskq-dashboard-catalog", daemon=True).start()
            # Counted from the scan's start: a page opened while the first scan runs does not wait again.
            remaining = wait_s - (now - self._began) if self._catalog is None else 0.0
        if remaining > 0:
            self._ready.wait(remaining)
        return self.view()

    def view(self) -> CatalogView:
        with self._lock:
            return CatalogView(
                self._catalog, self._taken_at, self._took_s, self._scanning_since, self._scanned, self._problem, self._restored
            )

    def _seen(self, count: int) -> None:
        with self._lock:
            self._scanned = count

    def _restore_saved(self) -> None:
        """The saved catalog, when this process has none yet (a missing or unreadable one is just skipped)."""
        if self._restore is None or self._catalog is not None:
            return
        began = time.monotonic()
        try:
            saved = self._restore()
        except TaskqError as exc:
            log.warning("dashboard: no saved task list: %s", exc)
            return
        if saved is None:
            return
        summaries, taken_at, took_s = saved
        catalog = Catalog(summaries)
        with self._lock:
            if self._catalog is None:
                self._catalog, self._taken_at, self._took_s, self._restored = catalog, taken_at, took_s, True
        self._ready.set()
        took = time.monotonic() - began
        log.info("dashboard: saved task list of %d tasks (scanned %s) read back in %.2f s", len(catalog), taken_at, took)

    def _run(self) -> None:
        self._restore_saved()
        taken_at, began = utcnow(), time.monotonic()
        catalog: Catalog | None = None
        problem: str | None = None
        summaries: list[Summary] = []
        try:
            summaries = list(self._scan(self._seen))
            catalog = Catalog(summaries)
        except TaskqError as exc:  # the last catalog stays; the next page load tries again
            log.warning("dashboard: task list scan failed: %s", exc)
            problem = "store unavailable"
        finally:
            took = time.monotonic() - began
            with self._lock:
                if catalog is not None:
                    self._catalog, self._taken_at, self._took_s, self._restored = catalog, taken_at, took, False
                self._problem = problem
                self._scanning_since = None
                self._ended = time.monotonic()
            self._ready.set()
        if catalog is None:
            return
        log.info("dashboard: task list of %d tasks scanned in %.2f s", len(catalog), took)
        if self._save is not None and time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self._saved_at = time.monotonic()
            began = time.monotonic()
            try:
                self._save(summaries, taken_at, took)
                log.info("dashboard: task list saved in %.2f s", time.monotonic() - began)
            except TaskqError as exc:
                log.warning("dashboard: task list not saved: %s", exc)
