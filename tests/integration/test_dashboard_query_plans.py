"""Every store query a dashboard page load sends is one the store serves without a scan, on the real test store.

The dashboard app runs in this process (FastAPI's TestClient) against the test RabbitMQ and store,
with a pymongo command listener recording what it sends while each page and live fragment is
loaded. Apart from the background task list scan (tagged with its comment, run in its own thread)
and the workers' heartbeats (one document per worker), every find must be by `_id` alone; the
server's `explain` must report it pushed down on FerretDB (`filterPushdown`, and SQLite's plan using
an index) or served by the `_id` index on MongoDB; no count, distinct or aggregate may be sent. The filters the tasks page used to
send (state, queue, name, time range, sorted, skipped) are explained too, and shown not pushed
down on FerretDB: the test can fail.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymongo import monitoring
from worker_procs import Services

from taskq.client import Client
from taskq.core.fencing import claim_id
from taskq.core.message import utcnow
from taskq.http.app import create_app
from taskq.http.auth import TokenSet
from taskq.settings import Settings
from taskq.store import dashboard_reads
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll
from taskq_dev.services import MongoService

pytestmark = [pytest.mark.services]

TOKEN = "plans-read-0123456789abcdef0123"
AUTH = TokenSet(TokenSet.parse(f"submit,read {TOKEN}\n", "test"))


class Recorder(monitoring.CommandListener):
    """The commands sent to the test database, with the thread that sent them."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.commands: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database:
            with self._lock:
                self.commands.append((threading.current_thread().name, event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self._lock:
            taken, self.commands = self.commands, []
        return taken


@pytest.fixture
def recorder(svc: Services) -> Iterator[Recorder]:
    listener = Recorder(svc.database)
    monitoring.register(listener)  # applies to clients made from now on: the app's are
    yield listener
    listener.database = "-"  # registered listeners cannot be removed; this one stops recording


def _seed(store: TaskStore, queue: str, total: int) -> list[str]:
    now = utcnow()
    states = ["succeeded", "failed", "dead", "queued", "running"]
    docs = [
        {
            "_id": f"plan-{i:05d}",
            "name": f"job{i % 3}",
            "queue": queue,
            "state": states[i % len(states)],
            "attempts": 1,
            "created_at": now - timedelta(seconds=total - i),
            "updated_at": now - timedelta(seconds=total - i),
            "timestamps": {"queued": now - timedelta(seconds=total - i)},
        }
        for i in range(total)
    ]
    store.tasks.insert_many(docs)
    return [d["_id"] for d in docs]


def _pushed_down(store: TaskStore, collection: str, query: dict[str, Any], limit: int = 0) -> bool:
    plan = dashboard_reads.explain_find(store, collection, query, limit=limit)
    if store.is_ferretdb():
        steps = " ".join(str(step) for step in plan.get("queryPlanner", {}).get("Plan", []))
        return plan.get("filterPushdown") is True and "USING INDEX" in steps  # pushed down to SQLite, which uses an index
    winning = str(plan.get("queryPlanner", {}).get("winningPlan", {}))
    return "IDHACK" in winning or ("IXSCAN" in winning and "_id_" in winning) or "EXPRESS" in winning


def test_page_loads_read_by_id_only_and_each_read_is_pushed_down(
    svc: Services, store: TaskStore, client: Client, recorder: Recorder, mongo: MongoService
) -> None:
    client._ensure_queue(svc.queue)
    ids = _seed(store, svc.queue, 300)
    claim = {"_id": claim_id(ids[7], 1), "task_id": ids[7], "attempt": 1, "state": "failed", "claimed_at": utcnow()}
    store.claims.insert_one(claim)
    # The harness's index on the `_id` expression FerretDB's SQLite backend filters on (its own `_id` index is on
    # another expression): without it a pushed-down `{_id: ...}` read is still a scan of the table (taskq_dev.mongo).
    mongo.index_writes(svc.database)
    settings = Settings(amqp_url=svc.amqp_url, mongodb_uri=svc.mongodb_uri, database=svc.database, queue=svc.queue)
    app = create_app(settings, auth=AUTH)
    since = (utcnow() - timedelta(seconds=100)).strftime("%Y-%m-%dT%H:%M:%S")
    pages = [
        "/",
        "/ui/workers",
        "/ui/tasks",
        "/ui/tasks?state=failed",
        f"/ui/tasks?queue={svc.queue}",
        "/ui/tasks?name=job1",
        f"/ui/tasks?since={since}",
        "/ui/tasks?id=plan-001",
        f"/ui/tasks?queue={svc.queue}&state=dead&name=job2",
        "/ui/tasks?page=2",
        f"/ui/tasks/{ids[7]}",
        f"/ui/dead?queue={svc.queue}",
    ]
    with TestClient(app) as http:
        login = http.post("/ui/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
        assert login.status_code == 303
        # The first load starts the task list scan; wait until it has ended so page loads read the catalog.
        poll(lambda: 'id="computing"' not in http.get("/").text, timeout=60, what="the first task list scan")
        poll(lambda: "plan-00299" in http.get("/ui/tasks").text, timeout=60, what="the newest task listed")
        recorder.take()
        for path in pages:
            for fragment in (False, True):
                headers = {"HX-Request": "true", "HX-Target": "live"} if fragment else {}
                answer = http.get(path, headers=headers)
                assert answer.status_code == 200, (path, answer.text[:300])
        sent = recorder.take()
    scans = [c for thread, _, c in sent if thread == "taskq-dashboard-catalog"]
    page_loads = [(name, c) for thread, name, c in sent if thread != "taskq-dashboard-catalog"]
    assert all(c.get("comment") == dashboard_reads.SCAN_COMMENT or "getMore" in c for c in scans)
    names = {name for name, _ in page_loads}
    assert not names & {"aggregate", "count", "distinct"}, names
    finds = [c for name, c in page_loads if name == "find"]
    assert finds, "the page loads sent no find at all"
    checked = 0
    for command in finds:
        collection, query = command["find"], dict(command.get("filter") or {})
        if collection == "workers":
            assert query == {} and command.get("limit"), command  # one document per worker, bounded
            continue
        assert set(query) == {"_id"}, command
        wanted = query["_id"]
        # One `{_id: id}` each on FerretDB (its only pushed-down filter); MongoDB gets one `$in` over `_id`.
        by_ids = not store.is_ferretdb() and isinstance(wanted, dict) and set(wanted) == {"$in"}
        assert isinstance(wanted, str) or by_ids, command
        assert not command.get("sort") and not command.get("skip"), command
        assert _pushed_down(store, collection, query), (collection, query)
        checked += 1
    assert checked >= 50, checked  # the rows of a tasks page at least, plus the detail's claims

    # What the tasks page sent before: none of these is pushed down on FerretDB (each scanned the collection).
    if store.is_ferretdb():
        old = [{"state": "failed"}, {"queue": svc.queue, "state": {"$in": ["failed", "dead"]}}, {"name": "job1"}]
        assert not any(_pushed_down(store, "tasks", q, limit=51) for q in old)
