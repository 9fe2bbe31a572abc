"""What the dashboard's pages show, read through `taskq.Client`: queues, workers, task pages, one task, dead letters.

Broker figures come from passive declares (exact, ready messages and consumers only); unacked is
the sum of the in-flight counts the queue's live workers last reported in their heartbeats (every
2 s), since a passive declare has none and the management API's figures lag. Publish and deliver
rates come from one management API request per refresh (`taskq.broker.management`; "n/a" when it
is not configured or does not answer), desired/ready replicas from one TaskQueue list
(`taskq.http.dashboard.replicas`; hidden without a Kubernetes API). Counts by state, queue names and
the order of the tasks pages come from the task catalog (`taskq.http.dashboard.catalog`, a background
scan); a page load's store reads are by `_id` only (`taskq.store.dashboard_reads.tasks_by_id`, `get`,
`attempt_claims`) plus the workers' heartbeats (one document per worker).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pika

from taskq.broker import admin, management
from taskq.client import Client
from taskq.core.message import QUEUE_NAME_PATTERN, TASK_NAME_PATTERN, utcnow
from taskq.core.states import TaskState
from taskq.core.topology import dead_queue
from taskq.errors import TaskqError
from taskq.http.dashboard.catalog import CatalogView
from taskq.http.dashboard.replicas import ReplicaReader, Replicas
from taskq.settings import Settings
from taskq.store import dashboard_reads
from taskq.store.mongo import TaskStore

log = logging.getLogger("taskq.http.dashboard")

# The dashboard's own store client (socket timeout 120 s instead of the API's 15 s): on FerretDB each
# batch of the background task list scan (`taskq.http.dashboard.catalog`) decodes 2,000 documents,
# seconds on a loaded machine. Page loads read by `_id` only.
READ_TIMEOUT_MS = 40_000
LIVE_AFTER_S = 15.0  # a heartbeat older than this (the interval is 2 s) marks the worker stale
PAGE_SIZE = 50
MAX_PAGE = 2000  # pages are slices of the catalog's position lists; deeper than 100,000 rows, narrow the filters
STATES = [s.value for s in TaskState]
RETRYABLE = frozenset({TaskState.FAILED.value, TaskState.DEAD.value})
FINAL = frozenset(s.value for s in TaskState if s.is_final)
_ID_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
MAX_ATTEMPTS_SHOWN = 50


@dataclass(frozen=True)
class QueueRow:
    """One queue of the overview; `ready`/`consumers`/`dead` are None when the broker has no such queue."""

    name: str
    ready: int | None
    consumers: int | None
    dead: int | None
    unacked: int
    workers: int
    counts: dict[str, int] | None  # None while the first task list scan runs
    rates: management.QueueRates | None = None
    replicas: Replicas | None = None


@dataclass(frozen=True)
class Overview:
    """The queues page: its rows, whether rates could be read (else why not), whether replicas are known."""

    rows: list[QueueRow]
    rates_problem: str | None
    replicas_shown: bool
    catalog: CatalogView | None = None


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
    since: datetime | None = None
    until: datetime | None = None
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
        for key in ("since", "until"):
            text = params.get(key, "").strip()
            if text:
                moment = _moment(text)
                if moment is None:
                    wanted.problems.append(f"{key}: a UTC time like 2026-12-02T03:50 or 2026-12-02 03:50:15")
                setattr(wanted, key, moment)
        page = params.get("page", "1").strip()
        wanted.page = min(int(page), MAX_PAGE) if page.isdigit() and int(page) >= 1 else 1
        return wanted

    def query(self, **changes: Any) -> dict[str, str]:
        """These filters (with `changes`) as query parameters, empty ones left out."""
        values = {
            "queue": self.queue,
            "state": self.state,
            "name": self.name,
            "id": self.id_prefix,
            "since": _form_time(self.since),
            "until": _form_time(self.until),
            "page": str(self.page),
        }
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}

    def key(self) -> tuple[Any, ...]:
        """What tells one page's read from another's (the snapshot key)."""
        return (self.queue, self.state, self.name, self.id_prefix, self.since, self.until, self.page)


def _moment(text: str) -> datetime | None:
    """A time as a `datetime-local` input sends it (`2026-12-02T03:50[:15]`) or in ISO 8601; naive means UTC."""
    try:
        moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _form_time(moment: datetime | None) -> str:
    """A time as a `datetime-local` input shows it (UTC, to the second)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") if moment else ""


@dataclass(frozen=True)
class TaskPage:
    """One page: rows as read now (by id), in the catalog's order; its total when counted; partial; the catalog's view."""

    rows: list[dict[str, Any]]
    has_next: bool
    total: int | None = None
    partial: bool = False
    view: CatalogView | None = None
    left_out: int = 0  # listed by the catalog, but gone or no longer matching when read


@dataclass(frozen=True)
class TimelineEntry:
    state: str
    at: datetime


@dataclass(frozen=True)
class AttemptRow:
    """One attempt of a task: its outcome claim (state, worker, time, error), or None fields when it has none."""

    attempt: int
    state: str | None
    worker: str | None
    at: datetime | None
    error: dict[str, Any] | None


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


def rates(settings: Settings) -> tuple[dict[str, management.QueueRates], str | None]:
    """Every queue's rates from one management API request: (rates, None), or ({}, why there are none)."""
    if not settings.management_url:
        return {}, "no management API configured (TASKQ_MANAGEMENT_URL)"
    try:
        return management.queue_rates(settings.management_url, management.vhost_of(settings.amqp_url)), None
    except TaskqError as exc:
        log.warning("dashboard: no rates: %s", exc)
        return {}, "management API unavailable"


def queues(client: Client, store: TaskStore, view: CatalogView, replica_reader: ReplicaReader | None = None) -> Overview:
    """The queues that have tasks or workers (and the client's default queue), with depths, rates and the catalog's counts."""
    beats = [w for w in workers(store) if not w.stale]
    known = view.catalog.counts if view.catalog is not None else None
    counts = {q: {s: by_state.get(s, 0) for s in STATES} for q, by_state in (known or {}).items()}
    names = sorted(set(counts) | {w.queue for w in beats if w.queue} | {client.settings.queue})
    depths = _depths(client, names)
    by_queue, rates_problem = rates(client.settings)
    replicas = replica_reader.read() if replica_reader is not None else None
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
                counts=counts.get(name, dict.fromkeys(STATES, 0)) if known is not None else None,
                rates=by_queue.get(name),
                replicas=replicas.get(name) if replicas is not None else None,
            )
        )
    shown = [r for r in rows if r.ready is not None or (r.counts and any(r.counts.values())) or r.workers]
    return Overview(rows=shown, rates_problem=rates_problem, replicas_shown=replicas is not None, catalog=view)


def task_page(store: TaskStore, view: CatalogView, wanted: TaskFilter) -> TaskPage:
    """One page of tasks matching `wanted`, most recently updated first (as of the catalog), each row read now by id.

    A task gone since the catalog's scan (purged, expired), or that no longer matches the filters as
    read now (its state or update time moved on), is left out of its page and counted in `left_out`;
    before the first scan ends the page is empty, with the scan's progress in `view`.
    """
    if view.catalog is None:
        return TaskPage(rows=[], has_next=False, view=view)
    found = view.catalog.page(
        queue=wanted.queue or None,
        state=wanted.state or None,
        name=wanted.name or None,
        id_prefix=wanted.id_prefix or None,
        since=wanted.since,
        until=wanted.until,
        offset=(wanted.page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    documents = dashboard_reads.tasks_by_id(store, found.ids)
    current = [documents[i] for i in found.ids if i in documents]
    rows = [_shown(d) for d in current if _matches(d, wanted)]
    left_out = len(found.ids) - len(rows)
    return TaskPage(rows=rows, has_next=found.has_next, total=found.total, partial=found.partial, view=view, left_out=left_out)


def _matches(document: dict[str, Any], wanted: TaskFilter) -> bool:
    """Whether a task as read now still matches the filters its catalog entry matched (it may have moved on since)."""
    at = document.get("updated_at")
    return (
        (not wanted.state or document.get("state") == wanted.state)
        and (not wanted.queue or document.get("queue") == wanted.queue)
        and (not wanted.name or document.get("name") == wanted.name)
        and (wanted.since is None or (isinstance(at, datetime) and at >= wanted.since))
        and (wanted.until is None or (isinstance(at, datetime) and at < wanted.until))
    )


def task(store: TaskStore, task_id: str) -> dict[str, Any] | None:
    """One task's document with its timeline (states by time), or None."""
    document = store.get(task_id)
    if document is None:
        return None
    stamps = document.get("timestamps") or {}
    timeline = sorted((TimelineEntry(state, at) for state, at in stamps.items() if isinstance(at, datetime)), key=lambda e: e.at)
    shown = _shown(document, _FIELDS + _DETAIL_FIELDS)
    state = document.get("state")
    return {
        **shown,
        "timeline": timeline,
        "history": attempts(store, document),
        "retryable": state in RETRYABLE,
        "cancellable": state not in FINAL,
    }


def attempts(store: TaskStore, document: dict[str, Any]) -> list[AttemptRow]:
    """Each attempt of a task (the last `MAX_ATTEMPTS_SHOWN`) with its outcome claim: one read by `_id` per attempt.

    A `retrying` task's next attempt is read too (it may have ended already); an attempt without a
    claim has no outcome yet, or lost its claim to an administrative retry or requeue.
    """
    count = max(int(document.get("attempts") or 0), 1)
    retrying = document.get("state") == TaskState.RETRYING.value
    claims = store.attempt_claims(str(document["_id"]), count + 1 if retrying else count, limit=MAX_ATTEMPTS_SHOWN)
    last = max([count, *claims])
    rows = []
    for attempt in range(max(1, last - MAX_ATTEMPTS_SHOWN + 1), last + 1):
        claim = claims.get(attempt)
        if claim is None:
            rows.append(AttemptRow(attempt, None, None, None, None))
            continue
        stored = claim.get("set")
        error = stored.get("error") if isinstance(stored, dict) else None
        at = claim.get("claimed_at")
        worker = claim.get("worker")
        rows.append(
            AttemptRow(
                attempt,
                str(claim.get("state")),
                str(worker) if worker else None,
                at if isinstance(at, datetime) else None,
                error if isinstance(error, dict) else None,
            )
        )
    return rows


def dead_letters(client: Client, queue: str, limit: int = 50) -> list[admin.DeadLetter]:
    """Up to `limit` dead letters of `queue`, oldest first (peeked: they stay in the dead-letter queue)."""
    return client.dead(queue, limit=limit)
