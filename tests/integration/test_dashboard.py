"""The dashboard end to end: a real `taskq-api` and `taskq-worker` on the test RabbitMQ and store, driven
by headless Chromium through Playwright as a person would use it: log in, open every page (rates from
the management API, the workers' pool), filter tasks (also by update time), open a task (its
attempts from the outcome claims), retry a failed one, requeue a dead one, watch a count change
live after submitting tasks, cancel a running one, purge the queue; the queues page without a
management API (rates "n/a"). Screenshots go to tests/artifacts/dashboard/ (git-ignored).
Skips only when Debian's `chromium` is not installed (dev/system-deps.sh installs it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright
from worker_procs import Services, workers

from taskq.client import Client
from taskq.core.message import utcnow
from taskq.core.states import TaskState
from taskq.store.mongo import TaskStore
from taskq_dev.ports import free_port, poll
from taskq_dev.processes import stop_process
from taskq_dev.services import RabbitMQService

pytestmark = [pytest.mark.services, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("TASKQ_TEST_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FULL = "dash-full-0123456789abcdef0123"
READ_ONLY = "dash-read-0123456789abcdef0123"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
WAIT_MS = 30_000
RATE = re.compile(r"^\d+\.\d$")
NONZERO_RATE = re.compile(r"^(?!0\.0$)\d+\.\d$")

# A page's live part refreshes every 2-3 s from figures at most ~2 s old (taskq.http.dashboard.snapshots).
expect.set_options(timeout=15_000)

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@dataclass
class Api:
    base: str
    process: subprocess.Popen[str]
    log: list[str]


def _start_api(svc: Services, tokens: Path, **extra: str) -> Api:
    env = {k: v for k, v in svc.env().items() if not k.startswith(("TASKQ_API_", "TASKQ_DASHBOARD_")) and k != "KUBECONFIG"}
    env["TASKQ_API_TOKENS_FILE"] = str(tokens)
    env["TASKQ_DASHBOARD_KUBERNETES"] = "0"  # no cluster here (tests/cluster/test_dashboard_replicas.py has one)
    env.update(extra)
    command = [sys.executable, "-m", "taskq.http.serve", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    # A thread reads stderr line by line (select() on a buffered pipe misses lines already buffered).
    threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    running = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")

    def port() -> int | None:
        if process.poll() is not None:
            raise AssertionError("taskq-api exited:\n" + "".join(lines))
        found = [m for line in list(lines) if (m := running.search(line))]
        return int(found[0].group(1)) if found else None

    bound = poll(port, timeout=90, interval=0.1, what="taskq-api to listen")
    return Api(f"http://127.0.0.1:{bound}", process, lines)


def _tokens(tmp_path: Path) -> Path:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"submit,read {FULL}\nread {READ_ONLY}\n")
    return tokens


@contextmanager
def _running_api(svc: Services, tmp_path: Path, name: str, **extra: str) -> Iterator[Api]:
    server = _start_api(svc, _tokens(tmp_path), **extra)
    try:
        yield server
    finally:
        stop_process(server.process, 20)
        (_artifacts() / f"api-{name}.log").write_text("".join(server.log))


@pytest.fixture
def api(svc: Services, rabbitmq: RabbitMQService, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Api]:
    with _running_api(svc, tmp_path, request.node.name, TASKQ_MANAGEMENT_URL=rabbitmq.management_url) as server:
        yield server


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _artifacts() -> Path:
    """tests/artifacts/dashboard/, made on first use with a .gitignore that keeps all of tests/artifacts out of git."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS.parent / ".gitignore").write_text("*\n")
    return ARTIFACTS


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(_artifacts() / f"{name}.png"), full_page=True)


def _login(page: Page, base: str, token: str, path: str = "/") -> None:
    page.goto(base + path)
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(base + path) + r"$"))


def _wait_state(store: TaskStore, task_id: str, state: TaskState, after: Any = None) -> dict[str, Any]:
    """The task's document once it is in `state` (and, with `after`, entered it later than `after`)."""

    def reached() -> dict[str, Any] | None:
        doc = store.get(task_id)
        if doc is None or doc["state"] != state.value:
            return None
        if after is not None and not doc["timestamps"][state.value] > after:
            return None
        return doc

    return poll(reached, timeout=60, interval=0.2, what=f"{task_id} {state.value}")


def _http(api: Api, token: str | None = None) -> httpx.Client:
    cookies = {"taskq_session": token} if token else None
    return httpx.Client(base_url=api.base, cookies=cookies, timeout=10, follow_redirects=False)


def _accepting(page: Page, seen: list[str]) -> None:
    def accept(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)


def test_dashboard_in_chromium(
    svc: Services, client: Client, store: TaskStore, api: Api, browser: Browser, tmp_path: Path
) -> None:
    with workers(svc, tmp_path, count=1) as started:
        echo_ids = [client.submit("echo", args=[i], kwargs={"who": f"user-{i}"}, task_id=f"echo-{i}") for i in range(3)]
        for task_id in echo_ids:
            _wait_state(store, task_id, TaskState.SUCCEEDED)
        # A time between the echo tasks' last writes and the next tasks' first (the form has 1 s steps).
        time.sleep(1.0)
        middle = utcnow().replace(microsecond=0)
        time.sleep(1.2)
        failed_id = client.submit("reject", kwargs={"message": "bad input on purpose"}, task_id="reject-1")
        dead_id = client.submit("fail", kwargs={"message": "always fails"}, task_id="fail-1", max_retries=0)
        flaky_id = client.submit("fail", kwargs={"message": "fails each time"}, task_id="flaky-1", max_retries=2)
        failed = _wait_state(store, failed_id, TaskState.FAILED)
        dead = _wait_state(store, dead_id, TaskState.DEAD)
        _wait_state(store, flaky_id, TaskState.DEAD)
        poll(lambda: client.queue_info(svc.queue).dead == 2, timeout=30, what="the dead letters")

        page = browser.new_page(viewport={"width": 1400, "height": 900})
        dialogs: list[str] = []
        _accepting(page, dialogs)

        # Login: a wrong token is refused, the right one lands on the queues page with an HttpOnly, strict cookie.
        page.goto(api.base + "/")
        expect(page).to_have_url(re.compile(r"/ui/login"))
        page.fill("#token", "not-a-token-0123456789")
        page.click("button[type=submit]")
        expect(page.locator("[role=alert]")).to_have_text("Not a valid token.")
        _shot(page, "01-login")
        page.fill("#token", FULL)
        page.click("button[type=submit]")
        page.wait_for_url(api.base + "/")
        cookie = next(c for c in page.context.cookies() if c["name"] == "taskq_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        # Queues: counts by state, dead letters, consumers, rates from the management API; no replicas column
        # without a Kubernetes API.
        row = page.locator(f"tr[data-queue='{svc.queue}']")
        expect(row.locator("[data-state=succeeded]")).to_have_text("3")
        expect(row.locator("[data-state=failed]")).to_have_text("1")
        expect(row.locator("[data-state=dead]")).to_have_text("2")
        expect(row.locator("[data-field=dead]")).to_have_text("2")
        expect(row.locator("[data-field=consumers]")).to_have_text("1")
        expect(row.locator("[data-field=publish-rate]")).to_have_text(RATE)
        expect(row.locator("[data-field=deliver-rate]")).to_have_text(RATE)
        expect(page.locator("#replicas-head")).to_have_count(0)
        _shot(page, "02-queues")

        # Workers: the one worker, live, with its pool kind.
        page.click("nav >> text=Workers")
        worker_id = started[0].env["TASKQ_WORKER_ID"]
        expect(page.locator(f"tr[data-worker='{worker_id}']")).to_have_class("live")
        expect(page.locator(f"tr[data-worker='{worker_id}'] [data-field=pool]")).to_have_text("process")
        _shot(page, "03-workers")

        # Tasks: every task, then filtered by update time, state, name, id prefix and queue.
        page.click("nav >> text=Tasks")
        expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(6)
        page.fill("input[name=until]", middle.strftime("%Y-%m-%dT%H:%M:%S"))
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(3)
        assert sorted(page.locator("#tasks tbody tr[data-task]").evaluate_all("rs => rs.map(r => r.dataset.task)")) == echo_ids
        page.fill("input[name=until]", "")
        page.fill("input[name=since]", middle.strftime("%Y-%m-%dT%H:%M:%S"))
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(3)
        expect(page.locator(f"tr[data-task='{flaky_id}']")).to_be_visible()
        expect(page.locator("input[name=since]")).to_have_attribute("value", middle.strftime("%Y-%m-%dT%H:%M:%S"))
        _shot(page, "04a-tasks-since")
        page.select_option("select[name=state]", "dead")
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(2)
        page.fill("input[name=since]", "")
        page.fill("input[name=until]", (middle - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"))
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody")).to_contain_text("No tasks match.")
        page.goto(f"{api.base}/ui/tasks")
        page.select_option("select[name=state]", "failed")
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(1)
        expect(page.locator(f"tr[data-task='{failed_id}']")).to_be_visible()
        page.select_option("select[name=state]", "")
        page.fill("input[name=name]", "echo")
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(3)
        page.fill("input[name=name]", "")
        page.fill("input[name=id]", "echo-1")
        page.select_option("select[name=queue]", svc.queue)
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(1)
        page.goto(f"{api.base}/ui/tasks?queue={svc.queue}")
        _shot(page, "04-tasks")

        # One task: arguments, result, timeline.
        page.click(f"tr[data-task='{echo_ids[2]}'] a")
        expect(page.locator("#state")).to_have_text("succeeded")
        expect(page.locator("#args")).to_contain_text('"who": "user-2"')
        expect(page.locator("#result")).to_be_visible()
        expect(page.locator("#timeline li")).to_have_count(3)
        expect(page.locator("#retry")).to_be_disabled()
        expect(page.locator("#history tbody tr")).to_have_count(1)
        expect(page.locator("#history tr[data-attempt='1']")).to_contain_text("succeeded")
        expect(page.locator("#history tr[data-attempt='1']")).to_contain_text(worker_id)

        # A task that failed three times: each attempt's outcome, worker and time from its outcome claim.
        page.goto(f"{api.base}/ui/tasks/{flaky_id}")
        history = page.locator("#history tbody tr")
        expect(history).to_have_count(3)
        for attempt, outcome in [(1, "retrying"), (2, "retrying"), (3, "dead")]:
            line = page.locator(f"#history tr[data-attempt='{attempt}']")
            expect(line).to_contain_text(outcome)
            expect(line).to_contain_text(worker_id)
            expect(line).to_contain_text("fails each time")
        stamps = history.locator("td:nth-child(4)").all_inner_texts()
        decided = [datetime.strptime(t[:23], "%Y-%m-%d %H:%M:%S.%f") for t in stamps]
        assert decided == sorted(decided) and decided[0] < decided[-1]
        _shot(page, "05b-task-attempts")

        # The failed task: its error with traceback; retry it (confirmed), it runs again and fails again.
        page.goto(f"{api.base}/ui/tasks/{failed_id}")
        expect(page.locator("#error")).to_contain_text("bad input on purpose")
        expect(page.locator("#traceback")).to_contain_text("Traceback")
        _shot(page, "05-task-failed")
        page.click("#retry")
        expect(page.locator(".notice")).to_have_text("The task was queued again as a first attempt.")
        assert dialogs[-1] == f"Retry task {failed_id}? It runs again as a first attempt."
        again = _wait_state(store, failed_id, TaskState.FAILED, after=failed["timestamps"]["failed"])
        assert again["timestamps"]["queued"] > failed["timestamps"]["failed"] and again["attempts"] == 1
        expect(page.locator("#timeline li").last).to_contain_text("failed")  # the live part caught up

        # Dead letters: the dead task's letter; requeue it (confirmed): it leaves the dead-letter queue and runs again.
        page.click("nav >> text=Dead letters")
        expect(page.locator(f"#dead tr[data-task='{dead_id}']")).to_contain_text("retries exhausted")
        _shot(page, "06-dead-letters")
        page.click(f"#dead tr[data-task='{dead_id}'] button")
        expect(page.locator(".notice")).to_have_text("The task's dead letter was sent back to its queue.")
        assert dialogs[-1] == f"Requeue dead task {dead_id}?"
        _wait_state(store, dead_id, TaskState.DEAD, after=dead["timestamps"]["dead"])

        # Live: submit tasks while the queues page is open; the count changes without a reload.
        page.click("nav >> text=Queues")
        row = page.locator(f"tr[data-queue='{svc.queue}']")
        expect(row.locator("[data-state=succeeded]")).to_have_text("3")
        page.evaluate("window.__notReloaded = true")
        started_at = time.monotonic()
        client.submit_many({"name": "echo", "args": [i]} for i in range(20))
        expect(row.locator("[data-state=succeeded]")).to_have_text("23", timeout=WAIT_MS)
        seen_after_s = time.monotonic() - started_at
        print(f"dashboard: 20 submitted tasks counted as succeeded on the open page after {seen_after_s:.1f} s")

        # Rates: a steady trickle (4 tasks/s for 8 s) moves the publish and deliver rates off zero on the open
        # page. A burst like the one above can fall within one statistics sample (1 s on the test broker),
        # between two refreshes of the page: its rate is seen for about a second only.
        def trickle() -> None:
            with Client(client.settings) as producer:
                for i in range(32):
                    producer.submit("echo", args=[i])
                    time.sleep(0.25)

        trickling = threading.Thread(target=trickle, name="trickle", daemon=True)
        trickling.start()
        expect(row.locator("[data-field=publish-rate]")).to_have_text(NONZERO_RATE, timeout=WAIT_MS)
        expect(row.locator("[data-field=deliver-rate]")).to_have_text(NONZERO_RATE, timeout=WAIT_MS)
        _shot(page, "07-queues-live")
        trickling.join(timeout=60)
        assert not trickling.is_alive()
        expect(row.locator("[data-state=succeeded]")).to_have_text("55", timeout=WAIT_MS)
        assert page.evaluate("window.__notReloaded") is True

        # Cancel (confirmed) a running task: the worker stops it and the open page shows it cancelled.
        sleepy = client.submit("sleep", kwargs={"seconds": 60}, task_id="sleepy-1")
        _wait_state(store, sleepy, TaskState.RUNNING)
        page.goto(f"{api.base}/ui/tasks/{sleepy}")
        expect(page.locator("#state")).to_have_text("running")
        page.click("#cancel")
        expect(page.locator(".notice")).to_have_text("The task was cancelled.")
        assert dialogs[-1] == f"Cancel task {sleepy}? A running attempt is stopped."
        expect(page.locator("#state")).to_have_text("cancelled")
        expect(page.locator("#cancel")).to_be_disabled()
        _shot(page, "08-task-cancelled")
        page.click("nav >> text=Queues")

        # Purge (confirmed): messages, dead letters and documents of the queue are gone.
        poll(lambda: client.queue_info(svc.queue).dead == 2, timeout=30, what="the dead letter back")
        row.locator("button.danger").click()
        expect(page.locator(".notice")).to_contain_text("were removed")
        assert dialogs[-1].startswith(f"Purge queue {svc.queue}?")
        assert store.counts_by_state(svc.queue)["succeeded"] == 0 and client.queue_info(svc.queue).dead == 0


def test_queues_page_without_management_api(svc: Services, client: Client, tmp_path: Path, browser: Browser) -> None:
    """A management API that does not answer: the rates read "n/a" (with the reason), the rest of the page stands."""
    client.submit("echo", args=[1], task_id="no-mgmt-1")  # no worker: stays queued
    closed = f"http://guest:guest@127.0.0.1:{free_port()}"
    with _running_api(svc, tmp_path, "without-management", TASKQ_MANAGEMENT_URL=closed) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 600})
        _login(page, server.base, READ_ONLY, "/")
        row = page.locator(f"tr[data-queue='{svc.queue}']")
        expect(row.locator("[data-field=ready]")).to_have_text("1")
        expect(row.locator("[data-state=queued]")).to_have_text("1")
        for field_name in ("publish-rate", "deliver-rate"):
            expect(row.locator(f"[data-field={field_name}]")).to_have_text("n/a")
            expect(row.locator(f"[data-field={field_name}]")).to_have_attribute("title", "management API unavailable")
        expect(page.locator(".meta")).to_contain_text("management API unavailable")
        _shot(page, "11-queues-no-management")
        assert "guest:guest" not in "".join(server.log)


@contextmanager
def _counting_proxy(target: str) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP forwarder to `target` (the real management API) that records each request's path."""
    seen: list[str] = []

    class Forward(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            seen.append(self.path)
            upstream = urllib.request.Request(target + self.path, headers={"Authorization": self.headers["Authorization"]})
            with urllib.request.urlopen(upstream, timeout=10) as answer:  # noqa: S310 (loopback test broker)
                body = answer.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_rates_cost_one_management_request_per_refresh(
    svc: Services, client: Client, rabbitmq: RabbitMQService, tmp_path: Path, browser: Browser
) -> None:
    """Three open pages (two queues pages, one dead letters page) share the overview's snapshot: the
    management API gets one `GET /api/queues/<vhost>?columns=...` per refresh (every 2 s), not one per viewer."""
    client.submit("echo", args=[1], task_id="rates-1")  # no worker: stays queued
    user, password = rabbitmq.management_auth
    with _counting_proxy(rabbitmq.management_base) as (proxy, seen):
        proxied = proxy.replace("http://", f"http://{user}:{password}@")
        with _running_api(svc, tmp_path, "rates-per-refresh", TASKQ_MANAGEMENT_URL=proxied) as server:
            viewers = [browser.new_page() for _ in range(3)]
            for viewer, path in zip(viewers, ["/", "/", "/ui/dead"], strict=True):
                _login(viewer, server.base, READ_ONLY, path)
            row = viewers[0].locator(f"tr[data-queue='{svc.queue}']")
            expect(row.locator("[data-field=publish-rate]")).to_have_text(RATE)
            before, began = len(seen), time.monotonic()
            time.sleep(10)
            requests, spent = len(seen) - before, time.monotonic() - began
    assert all(path.startswith("/api/queues/%2F?columns=name,") for path in seen), seen[:3]
    # Each of the two queues pages polls every 2 s, the dead letters page every 5 s: ~13 polls in 10 s.
    assert 2 <= requests <= spent / 2 + 2, (requests, spent)
    print(f"dashboard: {requests} management requests in {spent:.1f} s with 3 pages open")


def test_read_only_sessions_and_csrf(svc: Services, client: Client, api: Api, browser: Browser) -> None:
    client.submit("reject", task_id="ro-1")  # no worker: stays queued
    page = browser.new_page()
    _login(page, api.base, READ_ONLY, "/ui/tasks/ro-1")
    expect(page.locator("#state")).to_have_text("queued")
    expect(page.locator("#retry")).to_have_count(0)  # no action for a read-only session
    expect(page.locator(".who")).to_contain_text("read only")
    with _http(api) as anonymous, _http(api, READ_ONLY) as reader, _http(api, FULL) as full:
        # Pages need a session; actions need the submit scope and the session's CSRF token.
        assert anonymous.get("/ui/tasks").status_code == 303
        assert anonymous.get("/ui/tasks", headers={"HX-Request": "true"}).status_code == 401
        assert reader.post("/ui/tasks/ro-1/retry", data={"csrf": "x"}).status_code == 403
        assert full.post("/ui/tasks/ro-1/retry", data={"csrf": "forged"}).status_code == 403
        assert full.post(f"/ui/queues/{svc.queue}/purge").status_code == 403
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', full.get("/ui/tasks/ro-1").text)
        assert csrf is not None
        retried = full.post("/ui/tasks/ro-1/retry", data={"csrf": csrf.group(1)})
        assert retried.status_code == 303 and retried.headers["location"].endswith("notice=not-retryable")
        # The login redirect stays on this site; static assets are served without a session.
        login = anonymous.post("/ui/login", data={"token": FULL, "next": "//elsewhere.example/x"})
        assert login.status_code == 303 and login.headers["location"] == "/"
        htmx = anonymous.get("/ui/static/htmx.min.js")
        assert htmx.status_code == 200 and htmx.text.startswith("/*! htmx 2.0.11")
        assert anonymous.get("/ui/static/../app.py").status_code == 404
        # Logging out needs the CSRF token too, and clears the cookie.
        assert full.post("/ui/logout", data={"csrf": "forged"}).status_code == 403
        out = full.post("/ui/logout", data={"csrf": csrf.group(1)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert 'taskq_session=""' in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    assert client.status("ro-1")["state"] == "queued"


SCALE_ENV = "TASKQ_DASHBOARD_SCALE"


def _seed(store: TaskStore, queues: list[str], total: int) -> None:
    """`total` task documents spread over `queues`, states and names, written directly (no broker)."""
    weights = [("succeeded", 70), ("failed", 8), ("queued", 12), ("dead", 4), ("running", 4), ("retrying", 2)]
    states = [state for state, weight in weights for _ in range(weight)]
    start = utcnow() - timedelta(hours=2)
    chunk: list[dict[str, Any]] = []
    for i in range(total):
        at = start + timedelta(milliseconds=i * 50)
        state = states[i % len(states)]
        chunk.append(
            {
                "_id": f"seed-{i:07d}",
                "name": f"job{i % 5}",
                "queue": queues[i % len(queues)],
                "state": state,
                "args": [i],
                "kwargs": {"n": i},
                "priority": 0,
                "attempts": 1,
                "worker": "seed-worker",
                "created_at": at,
                "updated_at": at,
                "timestamps": {"queued": at, state: at},
                "result": {"n": i} if state == "succeeded" else None,
                "error": {"type": "Boom", "message": "seeded", "traceback": "Traceback ...\n"}
                if state in ("failed", "dead")
                else None,
            }
        )
        if len(chunk) == 5000:
            store.tasks.insert_many(chunk, ordered=False)
            chunk = []
    if chunk:
        store.tasks.insert_many(chunk, ordered=False)


@pytest.mark.skipif(
    not os.environ.get(SCALE_ENV), reason=f"a measurement: set {SCALE_ENV}=100000 to time the pages at that many tasks"
)
def test_page_load_times_at_scale(svc: Services, client: Client, store: TaskStore, api: Api, browser: Browser) -> None:
    total = int(os.environ[SCALE_ENV])
    queues = [svc.queue, f"{svc.queue}-b", f"{svc.queue}-c", f"{svc.queue}-d"]
    for name in queues:
        client._ensure_queue(name)
    began = time.monotonic()
    _seed(store, queues, total)
    seeded_s = time.monotonic() - began
    began = time.monotonic()
    store.ensure_indexes()  # what a worker does at start
    indexed_s = time.monotonic() - began
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_navigation_timeout(600_000)
    _login(page, api.base, FULL, "/ui/workers")
    since = (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    pages = {
        "queues": "/",
        "workers": "/ui/workers",
        "tasks": "/ui/tasks",
        "tasks, queue + state": f"/ui/tasks?queue={svc.queue}&state=failed",
        "tasks, name": "/ui/tasks?name=job3",
        "tasks, id prefix": "/ui/tasks?id=seed-00123",
        "tasks, queue + updated since": f"/ui/tasks?queue={svc.queue}&since={since}",
        "tasks, page 20": f"/ui/tasks?queue={svc.queue}&page=20",
        "task": "/ui/tasks/seed-0000042",
        "dead letters": "/ui/dead",
    }
    first: dict[str, float] = {}
    warm: dict[str, float] = {}
    for label, path in pages.items():
        samples = []
        for _ in range(4):  # the first load of a view reads the store; the next ones are served from its snapshot
            began = time.monotonic()
            answer = page.goto(api.base + path)
            assert answer is not None and answer.status == 200, (label, answer.status if answer else None)
            samples.append(time.monotonic() - began)
        first[label] = samples[0]
        warm[label] = sorted(samples[1:])[1]
    page.goto(api.base + "/")
    _shot(page, f"09-queues-{total}")
    page.goto(api.base + "/ui/tasks")
    _shot(page, f"10-tasks-{total}")
    report: dict[str, Any] = {"tasks": total, "store": "FerretDB" if store.is_ferretdb() else "MongoDB"}
    report.update(seed_s=round(seeded_s, 1), create_indexes_s=round(indexed_s, 1))
    report["first_load_s"] = {label: round(seconds, 3) for label, seconds in first.items()}
    report["next_loads_median_s"] = {label: round(seconds, 3) for label, seconds in warm.items()}
    (_artifacts() / f"load-times-{total}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
