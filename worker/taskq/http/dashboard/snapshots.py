"""Shared, briefly kept results of the dashboard's costly reads (queue overview, task pages), refreshed behind the page.

Every open page polls; without sharing, N viewers cost N store queries per refresh. A snapshot
younger than `max_age_s` is served as it is; an older one is served too while one background
thread reads it again (one per key at a time), so a page waits for a read only the first time a key
is asked for. That matters on FerretDB 1.x, where these reads scan the collection (seconds at tens
of thousands of tasks; see the README): the page then shows figures as of the last read, with its
time and duration. On MongoDB the reads are indexed and the snapshots just spare the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from taskq.core.message import utcnow
from taskq.errors import TaskqError

T = TypeVar("T")
log = logging.getLogger("taskq.http.dashboard")


@dataclass(frozen=True)
class Snapshot(Generic[T]):
    """A read's result, when it was taken and how long the read took."""

    value: T
    taken_at: datetime
    took_s: float
    monotonic: float


class Snapshots:
    """Per-key snapshots, at most `max_keys` of them (least recently used dropped first)."""

    def __init__(self, max_age_s: float = 2.0, max_keys: int = 64) -> None:
        self.max_age_s = max_age_s
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Snapshot[Any]] = OrderedDict()
        self._refreshing: set[Hashable] = set()
        self._first_reads: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, read: Callable[[], T]) -> Snapshot[T]:
        """The snapshot of `key`: fresh, or stale with a refresh started, or read now when there is none."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                if time.monotonic() - entry.monotonic > self.max_age_s and key not in self._refreshing:
                    self._refreshing.add(key)
                    threading.Thread(target=self._refresh, args=(key, read), name="taskq-dashboard-read", daemon=True).start()
                return entry
            first = self._first_reads.setdefault(key, threading.Lock())
        with first:  # one first read per key; the others wait for it and take its result
            with self._lock:
                entry = self._entries.get(key)
            if entry is not None:
                return entry
            snapshot = self._read(read)
            self._store(key, snapshot)
        with self._lock:
            self._first_reads.pop(key, None)
        return snapshot

    @staticmethod
    def _read(read: Callable[[], T]) -> Snapshot[T]:
        taken_at, began = utcnow(), time.monotonic()
        value = read()
        return Snapshot(value, taken_at, time.monotonic() - began, time.monotonic())

    def _store(self, key: Hashable, snapshot: Snapshot[T]) -> None:
        with self._lock:
            self._entries[key] = snapshot
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)

    def _refresh(self, key: Hashable, read: Callable[[], T]) -> None:
        try:
            self._store(key, self._read(read))
        except TaskqError as exc:  # the page keeps the last figures; the next request tries again
            log.warning("dashboard read %r failed: %s", key, exc)
        finally:
            with self._lock:
                self._refreshing.discard(key)
