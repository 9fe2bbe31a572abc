"""`make bench-dashboard`: the dashboard's page load times with 100,000 tasks in the store.

Fills a fresh database with `--tasks` task documents (insert_many; states, queues, names and update
times spread like a busy day), starts `taskq-api` against it on the test RabbitMQ and store
(`AMQP_URL` / `MONGODB_URI`, or private ones from `taskq_dev.services`), logs in and times every
page and live fragment a person loads: queues, workers, tasks (unfiltered, by state, queue, name,
time range, id prefix, combined, page 2 and 200), one task, dead letters. Each view: its first load
in a fresh API process before the task list scan has ended ("cold", what a person sees right after
the first start on a store), its first load once the scan has ended, then `--loads` more (p50 and
max), and its first load in a second API process started after the first had saved its task list
("restart"). The explain of
the page loads' store queries on the server (FerretDB: pushed down or not) goes in the report too.
Results: `bench/results/dashboard.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from taskq.client import Client
from taskq.settings import Settings
from taskq.store import dashboard_reads
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll
from taskq_dev.processes import stop_process
from taskq_dev.services import session_services

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "dashboard.json"
TOKEN = "bench-dash-0123456789abcdef0123"
WEIGHTS = [
    ("succeeded", 70),
    ("failed", 8),
    ("queued", 10),
    ("scheduled", 2),
    ("dead", 4),
    ("running", 3),
    ("retrying", 2),
    ("cancelled", 1),
]
LOGGED = re.compile(r"dashboard: ((?:task list|saved task list).*)$")  # the API's scans, saves and read-backs
NAMES = ["reports.render", "mail.send", "images.resize", "billing.charge", "etl.load", "search.index", "audit.export"]


def seed(store: TaskStore, queues: list[str], total: int, end: datetime) -> float:
    """`total` task documents over the last 24 h, written by insert_many in chunks of 2,000; returns seconds."""
    states = [state for state, weight in WEIGHTS for _ in range(weight)]
    span_ms = 24 * 3600 * 1000
    began = time.monotonic()
    chunk: list[dict[str, Any]] = []
    for i in range(total):
        at = end - timedelta(milliseconds=span_ms * (total - i) / total)
        state = states[(i * 7919) % len(states)]
        final = state in ("succeeded", "failed", "dead", "cancelled")
        chunk.append(
            {
                "_id": f"task-{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}-{i:06d}",  # spread prefixes: "task-1" is 1 in 16
                "name": NAMES[(i * 31) % len(NAMES)],
                "queue": queues[(i * 13) % len(queues)] if i % 10 else queues[0],
                "state": state,
                "args": [i, "x" * 40],
                "kwargs": {"account": i % 977, "priority": "normal"},
                "priority": i % 3,
                "max_retries": 3,
                "timeout": 300,
                "attempts": 1 + (i % 3 if state in ("dead", "retrying", "failed") else 0),
                "worker": None if state in ("queued", "scheduled") else f"worker-{i % 8}",
                "created_at": at - timedelta(seconds=2),
                "updated_at": at,
                "timestamps": {
                    "queued": at - timedelta(seconds=2),
                    **({"running": at - timedelta(seconds=1)} if final else {}),
                    state: at,
                },
                "result": {"rows": i % 1000} if state == "succeeded" else None,
                "error": {"type": "ValueError", "message": f"bad row {i}", "traceback": "Traceback (most recent call last):\n"}
                if state in ("failed", "dead", "retrying")
                else None,
                "fence": 2,
            }
        )
        if len(chunk) == 2000:
            store.tasks.insert_many(chunk, ordered=False)
            chunk = []
    if chunk:
        store.tasks.insert_many(chunk, ordered=False)
    return time.monotonic() - began


class Api:
    """One `taskq-api` process on a free port, its log kept."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.lines: list[str] = []
        command = [sys.executable, "-m", "taskq.http.serve", "--host", "127.0.0.1", "--port", "0"]
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        threading.Thread(target=lambda: self.lines.extend(iter(self.process.stderr.readline, "")), daemon=True).start()  # type: ignore[union-attr]
        running = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")

        def port() -> int | None:
            if self.process.poll() is not None:
                raise RuntimeError("taskq-api exited:\n" + "".join(self.lines))
            found = [m for line in list(self.lines) if (m := running.search(line))]
            return int(found[0].group(1)) if found else None

        self.base = f"http://127.0.0.1:{poll(port, timeout=90, interval=0.1, what='taskq-api to listen')}"
        self.http = httpx.Client(base_url=self.base, timeout=600, follow_redirects=False)
        answer = self.http.post("/ui/login", data={"token": TOKEN, "next": "/"})
        assert answer.status_code == 303, answer.text
        self.http.cookies = answer.cookies

    def load(self, path: str, fragment: bool = False) -> tuple[float, str]:
        headers = {"HX-Request": "true", "HX-Target": "live"} if fragment else {}
        began = time.monotonic()
        answer = self.http.get(path, headers=headers)
        took = time.monotonic() - began
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
        return took, answer.text

    def close(self) -> None:
        self.http.close()
        stop_process(self.process, 20)
        self.log_path.write_text("".join(self.lines))


def views(queue: str, sample_id: str, end: datetime) -> dict[str, tuple[str, bool]]:
    since = (end - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    until = (end - timedelta(hours=20)).strftime("%Y-%m-%dT%H:%M:%S")
    pages = {
        "queues": "/",
        "workers": "/ui/workers",
        "tasks": "/ui/tasks",
        "tasks, state=failed": "/ui/tasks?state=failed",
        "tasks, queue": f"/ui/tasks?queue={queue}",
        "tasks, name": "/ui/tasks?name=billing.charge",
        "tasks, updated in the last hour": f"/ui/tasks?since={since}",
        "tasks, updated before 20 h ago": f"/ui/tasks?until={until}",
        "tasks, id prefix": "/ui/tasks?id=task-1",
        "tasks, queue + state=dead + name": f"/ui/tasks?queue={queue}&state=dead&name=mail.send",
        "tasks, page 2": "/ui/tasks?page=2",
        "tasks, state=succeeded page 200": "/ui/tasks?state=succeeded&page=200",
        "task detail": f"/ui/tasks/{sample_id}",
        "dead letters": f"/ui/dead?queue={queue}",
    }
    table: dict[str, tuple[str, bool]] = {label: (path, False) for label, path in pages.items()}
    for label in ("queues", "workers", "tasks", "tasks, state=failed", "task detail"):
        table[f"{label} (live fragment)"] = (pages[label], True)
    return table


def computing(html: str) -> bool:
    return 'id="computing"' in html


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "load_avg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def explains(store: TaskStore, sample_id: str) -> dict[str, Any]:
    """The server's plan of the queries a page load makes (by _id) and of the filters it no longer sends."""
    ferret = store.is_ferretdb()

    def plan(query: dict[str, Any], limit: int = 0) -> dict[str, Any]:
        found = dashboard_reads.explain_find(store, "tasks", query, limit=limit)
        if ferret:
            return {k: found.get(k) for k in ("filterPushdown", "sortPushdown", "limitPushdown")}
        winning = found.get("queryPlanner", {}).get("winningPlan", {})
        return {"winningPlan": json.loads(json.dumps(winning, default=str))}

    return {
        "page load: a task by id (tasks rows, task detail)": plan({"_id": sample_id}),
        "page load: the claims of an attempt by id": plan({"_id": f"{sample_id}:1"}),
        "background scan: every task, no filter": plan({}),
        "not sent any more: state filter": plan({"state": "failed"}, 51),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=5, help="loads of each view after its first (p50, max)")
    args = parser.parse_args()
    services = session_services()
    log_dir = Path(tempfile.mkdtemp(prefix="taskq-bench-dashboard-"))  # the API's logs, printed at the end
    try:
        rabbit, mongo = services.ensure_rabbitmq(), services.ensure_mongo()
        database = f"dash_{uuid.uuid4().hex[:6]}"
        queues = [f"dash-{uuid.uuid4().hex[:4]}-{n}" for n in ("reports", "mail", "media", "billing")]
        settings = Settings(amqp_url=rabbit.amqp_url, mongodb_uri=mongo.uri, database=database, queue=queues[0])
        with Client(settings) as client:
            for name in queues:
                client._ensure_queue(name)
        store = TaskStore(mongo.uri, database, timeout_ms=60_000)
        end = datetime.now(UTC)
        seed_s = seed(store, queues, args.tasks, end)
        began = time.monotonic()
        store.ensure_indexes()  # what a worker does at start
        index_writes = getattr(mongo, "index_writes", None)
        if callable(index_writes):
            index_writes(database)  # what the harness does for workers on FerretDB: the `_id` expression index
        index_s = time.monotonic() - began
        sample_id = str(store.tasks.find_one({"_id": {"$exists": True}}, {"_id": 1})["_id"])  # type: ignore[index]
        info = store._client.admin.command("buildInfo")
        ferret = store.is_ferretdb()
        store_kind = f"FerretDB {info.get('ferretdbVersion')}" if ferret else f"MongoDB {info.get('version')}"
        tokens = log_dir / "dashboard-tokens"
        tokens.write_text(f"submit,read {TOKEN}\n")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")},
            "TASKQ_AMQP_URL": rabbit.amqp_url,
            "TASKQ_MONGODB_URI": mongo.uri,
            "TASKQ_DATABASE": database,
            "TASKQ_QUEUE": queues[0],
            "TASKQ_API_TOKENS_FILE": str(tokens),
            "TASKQ_DASHBOARD_KUBERNETES": "0",
            "TASKQ_MANAGEMENT_URL": rabbit.management_url or "",
        }
        table = views(queues[0], sample_id, end)
        report: dict[str, Any] = {
            "tasks": args.tasks,
            "store": store_kind,
            "broker": "RabbitMQ " + getattr(rabbit, "version", "?"),
            "machine": machine(),
            "seed_s": round(seed_s, 1),
            "create_indexes_s": round(index_s, 1),
        }
        print(f"seeded {args.tasks} tasks in {seed_s:.1f} s ({store_kind})", flush=True)

        # 1. Cold: a fresh API process, every view loaded once right away (the task list scan has just begun).
        api = Api(env, log_dir / "dashboard-api-cold.log")
        started = time.monotonic()
        cold: dict[str, dict[str, Any]] = {}
        try:
            for label, (path, fragment) in table.items():
                took, html = api.load(path, fragment)
                cold[label] = {"s": round(took, 3), "computing": computing(html)}
                print(f"cold  {label:45s} {took:7.3f} s{'  (computing)' if computing(html) else ''}", flush=True)

            def scanned() -> str | None:
                html = api.load("/")[1]
                return None if computing(html) else html

            html = poll(scanned, timeout=1800, interval=1.0, what="the first task list scan")
            ready_s = time.monotonic() - started
            found = re.search(r"a scan of (\d+) tasks, ([^)]+)\)", html)
            report["first_scan"] = {"ready_after_start_s": round(ready_s, 1), "meta": found.group(0) if found else None}
            print(f"task list ready {ready_s:.1f} s after the API start: {found.group(0) if found else '?'}", flush=True)

            # 2. Warm: the first load of each view once the catalog exists, then `loads` more.
            warm: dict[str, dict[str, Any]] = {}
            for label, (path, fragment) in table.items():
                first, html = api.load(path, fragment)
                samples = [api.load(path, fragment)[0] for _ in range(args.loads)]
                warm[label] = {
                    "rows": html.count("<tr data-task="),
                    "first_s": round(first, 3),
                    "p50_s": round(statistics.median(samples), 3),
                    "max_s": round(max(samples), 3),
                }
                figures = warm[label]
                print(f"warm  {label:45s} {first:6.3f} p50 {figures['p50_s']:6.3f} max {figures['max_s']:6.3f}", flush=True)
            later = re.search(r"a scan of (\d+) tasks, ([^)]+)\)", api.load("/")[1])
            report["later_scan_meta"] = later.group(0) if later else None
        finally:
            api.close()

        # 3. Cold again: a new API process, which starts from the task list the first one saved (read back by _id).
        api = Api(env, log_dir / "dashboard-api-restart.log")
        restarted: dict[str, dict[str, Any]] = {}
        try:
            for label, (path, fragment) in table.items():
                took, html = api.load(path, fragment)
                restarted[label] = {"s": round(took, 3), "computing": computing(html), "saved_list": 'id="restored"' in html}
                flags = "  (computing)" if computing(html) else "  (saved list)" if restarted[label]["saved_list"] else ""
                print(f"restart {label:43s} {took:7.3f} s{flags}", flush=True)
        finally:
            api.close()
        report["api_log"] = {
            phase: [m.group(1) for line in path.read_text().splitlines() if (m := LOGGED.search(line))]
            for phase, path in (("first", log_dir / "dashboard-api-cold.log"), ("restart", log_dir / "dashboard-api-restart.log"))
        }
        report["cold_first_load_s"] = cold
        report["restart_first_load_s"] = restarted
        report["warm"] = warm
        report["explain"] = explains(store, sample_id)
        report["machine"]["load_avg_at_end"] = os.getloadavg()
        RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(json.dumps(report["explain"], indent=2, default=str))
        print(f"wrote {RESULTS}; API logs in {log_dir}")
        store.tasks.database.client.drop_database(database)
        store.close()
    finally:
        services.close()


if __name__ == "__main__":
    main()
