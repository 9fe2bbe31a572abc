"""The dashboard's routes on the API app: pages, their live fragments, login, actions and static assets.

Pages are server-rendered Jinja2 templates; each page's live part (`<div id="live">`) is polled by
htmx every few seconds and answered with that part alone (a request with `HX-Target: live`).
Pages need the `read` scope, actions (POST with the session's CSRF token) the `submit` scope
(`taskq.http.dashboard.session`). Answers carry a CSP allowing only this site's own scripts and
styles, and are not cached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool

from taskq.client import Client
from taskq.core.message import QUEUE_NAME_PATTERN, TASK_ID_PATTERN, utcnow
from taskq.errors import BrokerUnavailable, StoreUnavailable, TaskqError
from taskq.http.auth import Auth
from taskq.http.dashboard import actions, data
from taskq.http.dashboard.catalog import CatalogKeeper
from taskq.http.dashboard.replicas import ReplicaReader
from taskq.http.dashboard.session import COOKIE, COOKIE_MAX_AGE_S, CSRF_FIELD, Session, Sessions, safe_next
from taskq.http.dashboard.snapshots import Snapshot, Snapshots
from taskq.store import dashboard_reads

LOGIN = "/ui/login"
FIRST_WAIT_S = 3.0  # the first load after a start waits this long for the task list scan, then shows its progress
MAX_FORM_BYTES = 8 * 1024
_STATIC = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "htmx.LICENSE.txt": "text/plain; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _ago(value: Any) -> str:
    if not isinstance(value, datetime):
        return "-"
    seconds = max(0.0, (utcnow() - value).total_seconds())
    return _duration(seconds) + " ago"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _timestamp(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if isinstance(value, datetime) else "-"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("taskq.http.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=_ago, duration=_duration, ts=_timestamp)
    env.globals.update(states=data.STATES, csrf_field=CSRF_FIELD, live_after_s=int(data.LIVE_AFTER_S))
    return env


def _outage(exc: TaskqError) -> str:
    """What the page says about an outage: which side, never a host (that goes to the log)."""
    if isinstance(exc, BrokerUnavailable):
        return "broker unavailable"
    if isinstance(exc, StoreUnavailable):
        return "store unavailable"
    return "service unavailable"


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    fields = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=20)
    return {key: values[0] for key, values in fields.items() if values}


def _htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def dashboard_router(client: Client, auth: Auth) -> APIRouter:
    """The dashboard's routes for one API app, reading and acting through `client`, checking `auth`'s tokens."""
    sessions = Sessions(auth)
    snapshots = Snapshots(max_age_s=2.0)
    reads = data.Reads(client.settings)
    keeper = CatalogKeeper(
        lambda seen: dashboard_reads.scan_list_fields(reads.store, seen),
        max_age_s=2.0,
        restore=lambda: dashboard_reads.load_summaries(reads.store),
        save=lambda summaries, taken_at, took_s: dashboard_reads.save_summaries(reads.store, summaries, taken_at, took_s),
    )
    replica_reader = ReplicaReader()
    env = _environment()
    router = APIRouter(include_in_schema=False)
    indexed = threading.Event()
    index_lock = threading.Lock()

    def ensure_indexes() -> None:
        if indexed.is_set():
            return
        with index_lock:
            if not indexed.is_set():
                # The operator's and CLI's indexes (what a worker creates at start). The dashboard's own page reads
                # are by `_id` and need none: no `name, state, updated_at` index any more (each costs every write).
                reads.store.ensure_indexes()
                indexed.set()

    def render(request: Request, template: str, session: Session | None, status: int = 200, **context: Any) -> HTMLResponse:
        fragment = _htmx(request) and request.headers.get("HX-Target") == "live"
        notice = actions.NOTICES.get(request.query_params.get("notice", ""), "")
        count = request.query_params.get("n", "")
        html = env.get_template(template).render(
            fragment=fragment,
            session=session,
            open_auth=sessions.open,
            path=request.url.path,
            live_url=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
            notice=notice + (f" ({int(count)})" if notice and count.isdigit() else ""),
            now=utcnow(),
            **context,
        )
        return HTMLResponse(html, status, headers=_HEADERS)

    def gate(request: Request, *, act: bool = False) -> Session | Response:
        """The request's session, or the answer to send instead (login redirect, 403)."""
        session = sessions.from_cookie(request.cookies.get(COOKIE))
        if session is None or not session.can_read:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            target = f"{LOGIN}?{urlencode({'next': here})}"
            if _htmx(request):
                return Response(status_code=401, headers={**_HEADERS, "HX-Redirect": target})
            return RedirectResponse(target, 303, headers=_HEADERS)
        if act and not session.can_act:
            text = "This needs a token with the submit scope."
            return render(request, "message.html", session, 403, title="Not allowed", text=text)
        return session

    async def page(request: Request, template: str, load: Callable[[], dict[str, Any]]) -> Response:
        session = gate(request)
        if not isinstance(session, Session):
            return session
        try:
            await run_in_threadpool(ensure_indexes)
            context = await run_in_threadpool(load)
        except TaskqError as exc:
            return render(request, "message.html", session, 503, title="Unavailable", text=_outage(exc))
        return render(request, template, session, **context)

    async def act(request: Request, run: Callable[[], tuple[str, int | None]], back: str) -> Response:
        session = gate(request, act=True)
        if not isinstance(session, Session):
            return session
        form = await _form(request)
        if not session.csrf_ok(form.get(CSRF_FIELD)):
            return render(request, "message.html", session, 403, title="Expired form", text="Reload the page and try again.")
        try:
            code, count = await run_in_threadpool(run)
        except TaskqError as exc:
            return render(request, "message.html", session, 503, title="Unavailable", text=_outage(exc))
        query = {"notice": code, **({"n": str(count)} if count is not None else {})}
        target = f"{back}?{urlencode(query)}"
        if _htmx(request):
            return Response(status_code=200, headers={**_HEADERS, "HX-Redirect": target})
        return RedirectResponse(target, 303, headers=_HEADERS)

    def overview() -> Snapshot[data.Overview]:
        """The queues overview's snapshot (depths, rates, replicas and counts: one read of each per refresh)."""
        view = keeper.get(FIRST_WAIT_S)
        # Once the first scan has ended, the next load reads with its counts (not a snapshot from before it).
        key = ("queues", view.catalog is not None)
        return snapshots.get(key, lambda: data.queues(client, reads.store, keeper.get(), replica_reader))

    # -- pages ------------------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    async def queues_page(request: Request) -> Response:
        def load() -> dict[str, Any]:
            snapshot = overview()
            return {"overview": snapshot.value, "queues": snapshot.value.rows, "snapshot": snapshot}

        return await page(request, "queues.html", load)

    @router.get("/ui/workers", response_class=HTMLResponse)
    async def workers_page(request: Request) -> Response:
        return await page(request, "workers.html", lambda: {"workers": data.workers(reads.store)})

    @router.get("/ui/tasks", response_class=HTMLResponse)
    async def tasks_page(request: Request) -> Response:
        wanted = data.TaskFilter.parse(dict(request.query_params))

        def load() -> dict[str, Any]:
            view = keeper.get(FIRST_WAIT_S)
            key = ("tasks", view.catalog is not None, *wanted.key())  # the first scan's order is read at once
            snapshot = snapshots.get(key, lambda: data.task_page(reads.store, keeper.get(), wanted))
            names = view.catalog.queue_names() if view.catalog is not None else []
            if wanted.queue and wanted.queue not in names:
                names = sorted([*names, wanted.queue])
            return {"filters": wanted, "result": snapshot.value, "snapshot": snapshot, "queue_names": names}

        return await page(request, "tasks.html", load)

    @router.get("/ui/tasks/{task_id}", response_class=HTMLResponse)
    async def task_page(request: Request, task_id: str = Path(pattern=TASK_ID_PATTERN)) -> Response:
        def load() -> dict[str, Any]:
            return {"task": data.task(reads.store, task_id), "task_id": task_id}

        return await page(request, "task.html", load)

    @router.get("/ui/dead", response_class=HTMLResponse)
    async def dead_page(request: Request) -> Response:
        chosen = request.query_params.get("queue", "")

        def load() -> dict[str, Any]:
            rows = overview().value.rows
            names = [r.name for r in rows]
            queue = chosen if chosen in names else next((r.name for r in rows if r.dead), names[0] if names else "")
            letters = data.dead_letters(client, queue) if queue else []
            return {"queues": rows, "queue": queue, "letters": letters}

        return await page(request, "dead.html", load)

    # -- actions ----------------------------------------------------------------------------------

    @router.post("/ui/tasks/{task_id}/retry")
    async def retry_task(request: Request, task_id: str = Path(pattern=TASK_ID_PATTERN)) -> Response:
        return await act(request, lambda: (actions.retry(client, task_id), None), f"/ui/tasks/{task_id}")

    @router.post("/ui/tasks/{task_id}/cancel")
    async def cancel_task(request: Request, task_id: str = Path(pattern=TASK_ID_PATTERN)) -> Response:
        return await act(request, lambda: (actions.cancel(client, task_id), None), f"/ui/tasks/{task_id}")

    @router.post("/ui/queues/{queue}/requeue-dead")
    async def requeue_dead(request: Request, queue: str = Path(pattern=QUEUE_NAME_PATTERN)) -> Response:
        return await act(request, lambda: actions.requeue_all(client, queue), f"/ui/dead?{urlencode({'queue': queue})}")

    @router.post("/ui/queues/{queue}/purge")
    async def purge_queue(request: Request, queue: str = Path(pattern=QUEUE_NAME_PATTERN)) -> Response:
        return await act(request, lambda: (actions.purge(client, queue), None), "/")

    # -- login ------------------------------------------------------------------------------------

    @router.get(LOGIN, response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        if sessions.open:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303, headers=_HEADERS)
        return render(request, "login.html", None, next=safe_next(request.query_params.get("next")), error="")

    @router.post(LOGIN, response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await _form(request)
        target = safe_next(form.get("next"))
        token = form.get("token", "").strip()
        scopes = sessions.scopes_of(token) if token else frozenset()
        if not scopes or not Session(scopes, "").can_read:
            error = "This token has no read scope." if scopes else "Not a valid token."
            return render(request, "login.html", None, 401, next=target, error=error)
        answer = RedirectResponse(target, 303, headers=_HEADERS)
        answer.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_MAX_AGE_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        session = sessions.from_cookie(request.cookies.get(COOKIE))
        form = await _form(request)
        if session is not None and not session.csrf_ok(form.get(CSRF_FIELD)):
            return Response(status_code=403, headers=_HEADERS)
        answer = RedirectResponse(LOGIN, 303, headers=_HEADERS)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return answer

    # -- static -----------------------------------------------------------------------------------

    @router.get("/ui/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            return Response(status_code=404)
        body = resources.files("taskq.http.dashboard").joinpath("static", name).read_bytes()
        return Response(body, media_type=_STATIC[name], headers={"Cache-Control": "public, max-age=3600"})

    return router
