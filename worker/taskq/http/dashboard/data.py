"""What the dashboard's pages show, read through `taskq.Client`: queues, workers, task pages, one task, dead letters.

Broker figures come from passive declares (exact, ready messages and consumers only); unacked is
the sum of the in-flight counts the queue's live workers last reported in their heartbeats (every
2 s), since a passive declare has none and the management API's figures lag. Store reads are the
indexed ones of `TaskStore` (`all_state_counts`, `task_page`, `heartbeats`, `get`).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pika

from taskq.broker import admin
from taskq.client import Client
from taskq.core.message import QUEUE_NAME_PATTERN, TASK_NAME_PATTERN, utcnow
from taskq.core.states import TaskState
from taskq.core.topology import dead_queue
from taskq.settings import Settings
from taskq.store.mongo import TaskStore

# The page reads' own store client: a socket timeout of 120 s instead of the API's 15 s, since on
# FerretDB a read that scans 100k documents takes tens of seconds, more on a loaded machine (see
# `taskq.http.dashboard.snapshots`).
READ_TIMEOUT_MS = 40_000
LIVE_AFTER_S = 15.0  # a heartbeat older than this (the interval is 2 s) marks the worker stale
PAGE_SIZE = 50
MAX_PAGE = 200  # skip-based pages: deeper than 10,000 rows, narrow the filters instead
STATES = [s.value for s in TaskState]
RETRYABLE = frozenset({TaskState.FAILED.value, TaskState.DEAD.value})
FINAL = frozenset(s.value for s in TaskState if s.is_final)
_ID_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


@dataclass(frozen=True)
class QueueRow:
    """One queue of the overview; `ready`/`consumers`/`dead` are None when the broker has no such queue."""

    name: str
    ready: int | None
    consumers: int | None
    dead: int | None
    unacked: int
    workers: int
    counts: dict[str, int]


@dataclass(frozen=True)
class WorkerRow:
    """One worker's last heartbeat."""

    id: str
    queue: str
    inflight: int
    processed: int
    pool: str
    heartbeat_age_s: float | None
    up_s: float | None

    @property
    def stale(self) -> bool:
        return self.heartbeat_age_s is None or self.heartbeat_age_s > LIVE_AFTER_S


@dataclass
class TaskFilter:
    """The tasks page's filters as given, each checked (a rejected one is ignored and named in `problems`)."""

    queue: str = ""
    state: str = ""
    name: str = ""
    id_prefix: str = ""
    page: int = 1
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, params: dict[str, str]) -> TaskFilter:
        wanted = cls()
        queue, state, name = params.get("queue", "").strip(), params.get("state", "").strip(), params.get("name", "").strip()
        prefix = params.get("id", "").strip()
        if queue and re.fullmatch(QUEUE_NAME_PATTERN, queue):
            wanted.queue = queue
        elif queue:
            wanted.problems.append("queue: not a queue name")
        if state in STATES:
            wanted.state = state
        elif state:
            wanted.problems.append(f"state: one of {', '.join(STATES)}")
        if name and re.fullmatch(TASK_NAME_PATTERN, name):
            wanted.name = name
        elif name:
            wanted.problems.append("name: not a task name")
        if prefix and _ID_PREFIX.fullmatch(prefix):
            wanted.id_prefix = prefix
        elif prefix:
            wanted.problems.append("id: letters, digits and . _ : @ - only")
        page = params.get("page", "1").strip()
        wanted.page = min(int(page), MAX_PAGE) if page.isdigit() and int(page) >= 1 else 1
        return wanted

    def query(self, **changes: Any) -> dict[str, str]:
        """These filters (with `changes`) as query parameters, empty ones left out."""
        values = {"queue": self.queue, "state": self.state, "name": self.name, "id": self.id_prefix, "page": str(self.page)}
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


@dataclass(frozen=True)
class TaskPage:
    rows: list[dict[str, Any]]
    has_next: bool


@dataclass(frozen=True)
class TimelineEntry:
    state: str
    at: datetime


_FIELDS = ("name", "queue", "state", "attempts", "worker", "priority", "max_retries", "timeout", "created_at", "updated_at")
_DETAIL_FIELDS = ("args", "kwargs", "result", "error", "progress", "redeliveries")


class Reads:
    """The dashboard's store client for page reads, made on first use (the API's own keeps its short timeout)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: TaskStore | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> TaskStore:
        with self._lock:
            if self._store is None:
                self._store = TaskStore(self._settings.mongodb_uri, self._settings.database, timeout_ms=READ_TIMEOUT_MS)
            return self._store


def _shown(document: dict[str, Any], fields: tuple[str, ...] = _FIELDS) -> dict[str, Any]:
    """A document with `id` and every field a template reads (None where the store has none)."""
    return {**dict.fromkeys(fields), "error": None, **document, "id": document["_id"]}


def _seconds_since(now: datetime, then: Any) -> float | None:
    return (now - then).total_seconds() if isinstance(then, datetime) else None


def _depths(client: Client, names: list[str]) -> dict[str, tuple[admin.QueueDepth | None, admin.QueueDepth | None]]:
    def read(conn: pika.BlockingConnection) -> dict[str, tuple[admin.QueueDepth | None, admin.QueueDepth | None]]:
        return {n: (admin.queue_depth(conn, n), admin.queue_depth(conn, dead_queue(n))) for n in names}

    return client._with_admin(read)


def workers(store: TaskStore) -> list[WorkerRow]:
    """Every worker heartbeat, live ones first."""
    now = utcnow()
    rows = [
        WorkerRow(
            id=str(doc["_id"]),
            queue=str(doc.get("queue", "")),
            inflight=int(doc.get("inflight") or 0),
            processed=int(doc.get("processed") or 0),
            pool=str(doc.get("pool") or "-"),
            heartbeat_age_s=_seconds_since(now, doc.get("heartbeat_at")),
            up_s=_seconds_since(now, doc.get("started_at")),
        )
        for doc in store.heartbeats()
    ]
    return sorted(rows, key=lambda w: (w.stale, w.queue, w.id))


def queues(client: Client, store: TaskStore) -> list[QueueRow]:
    """The queues that have tasks or workers (and the client's default queue), with depths and counts by state."""
    beats = [w for w in workers(store) if not w.stale]
    counts = store.all_state_counts()
    names = sorted(set(counts) | {w.queue for w in beats if w.queue} | {client.settings.queue})
    depths = _depths(client, names)
    rows = []
    for name in names:
        work, dead = depths[name]
        mine = [w for w in beats if w.queue == name]
        rows.append(
            QueueRow(
                name=name,
                ready=work.messages if work else None,
                consumers=work.consumers if work else None,
                dead=dead.messages if dead else None,
                unacked=sum(w.inflight for w in mine),
                workers=len(mine),
                counts=counts.get(name, dict.fromkeys(STATES, 0)),
            )
        )
    return [r for r in rows if r.ready is not None or any(r.counts.values()) or r.workers]


def task_page(store: TaskStore, wanted: TaskFilter) -> TaskPage:
    """One page of tasks matching `wanted`, most recently updated first."""
    found = store.task_page(
        queue=wanted.queue or None,
        state=TaskState(wanted.state) if wanted.state else None,
        name=wanted.name or None,
        id_prefix=wanted.id_prefix or None,
        skip=(wanted.page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE + 1,
    )
    return TaskPage(rows=[_shown(d) for d in found[:PAGE_SIZE]], has_next=len(found) > PAGE_SIZE)


def task(store: TaskStore, task_id: str) -> dict[str, Any] | None:
    """One task's document with its timeline (states by time), or None."""
    document = store.get(task_id)
    if document is None:
        return None
    stamps = document.get("timestamps") or {}
    timeline = sorted((TimelineEntry(state, at) for state, at in stamps.items() if isinstance(at, datetime)), key=lambda e: e.at)
    shown = _shown(document, _FIELDS + _DETAIL_FIELDS)
    state = document.get("state")
    return {**shown, "timeline": timeline, "retryable": state in RETRYABLE, "cancellable": state not in FINAL}


def dead_letters(client: Client, queue: str, limit: int = 50) -> list[admin.DeadLetter]:
    """Up to `limit` dead letters of `queue`, oldest first (peeked: they stay in the dead-letter queue)."""
    return client.dead(queue, limit=limit)
