"""The HTTP intake service: a FastAPI app that submits tasks and reads their status through `taskq.Client`.

`create_app(settings, auth=...)` builds it (called by `taskq.http.serve` and by tests). Every error
answer is a `Problem` (`{"detail": ...}`): no or an invalid bearer token 401, a token without the
endpoint's scope 403 (`taskq.http.auth`), validation 422, unknown task or queue 404, body too large
413, broker or store down 503. A 503 says only which side is down ("broker unavailable"); the host
is logged, never answered. Malformed input never yields a 5xx. `/healthz` and `/readyz` are open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from taskq.client import Client
from taskq.core.message import QUEUE_NAME_PATTERN, TASK_ID_PATTERN
from taskq.core.states import TaskState
from taskq.errors import (
    BrokerRejected,
    BrokerUnavailable,
    InvalidTask,
    QueueNotFound,
    StoreUnavailable,
    TaskConflict,
    TaskNotFound,
    TaskqError,
)
from taskq.http.auth import DISABLED, READ, SUBMIT, Auth, TokenSet, requires
from taskq.http.dashboard import dashboard_router
from taskq.http.models import (
    BatchSubmission,
    BatchSubmitted,
    Cancelled,
    Health,
    Problem,
    QueueStatus,
    Submitted,
    TaskStatus,
    TaskSubmission,
)
from taskq.settings import Settings

log = logging.getLogger("taskq.http")

MAX_BODY_BYTES = 1024 * 1024
MAX_WAIT_S = 60.0
"""The longest long poll of `GET /v1/tasks/{id}?wait=` (proxies commonly cut idle requests at 60 s)."""
LONG_POLL_FIRST_INTERVAL_S = 0.05
LONG_POLL_MAX_INTERVAL_S = 1.0
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The request body cannot be parsed."},
    422: {"model": Problem, "description": "The request is not a valid task."},
    413: {"model": Problem, "description": "The request body is too large."},
    409: {"model": Problem, "description": "A given task id exists as another task (other queue or name)."},
    503: {"model": Problem, "description": "The broker or the store is unavailable."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such task or queue."}}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No bearer token, or not a valid one."},
    403: {"model": Problem, "description": "The token lacks the scope this endpoint needs."},
}


def _public_reason(exc: TaskqError) -> str:
    """What a client is told about an outage: which side, never a host, port or URI."""
    if isinstance(exc, BrokerRejected):
        return "broker refused the operation"
    if isinstance(exc, BrokerUnavailable):
        return "broker unavailable"
    if isinstance(exc, StoreUnavailable):
        return "store unavailable"
    return "service unavailable"


class BodyLimit:
    """ASGI middleware: answer 413 to a request body over `limit` bytes, before the app sees it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _is_final(document: dict[str, Any]) -> bool:
    state = document.get("state")
    return state in {s.value for s in TaskState} and TaskState(state).is_final


def _status_model(document: dict[str, Any]) -> TaskStatus:
    known = {k: v for k, v in document.items() if k in TaskStatus.model_fields and v is not None}
    return TaskStatus.model_validate(known)


def create_app(
    settings: Settings | None = None,
    *,
    auth: Auth,
    client: Client | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The intake app; it owns a `Client` built from `settings` (or uses `client`) and closes it on shutdown.

    `auth` is the `TokenSet` the endpoints check, or `"disabled"` (explicitly: local development only).
    """
    taskq = client or Client(settings or Settings())
    auth_errors: dict[int | str, dict[str, Any]] = {}
    can_submit: list[Any] = []
    can_read: list[Any] = []
    if isinstance(auth, TokenSet):
        auth_errors, can_submit, can_read = _AUTH_ERRORS, [Depends(requires(SUBMIT, auth))], [Depends(requires(READ, auth))]
    elif auth != DISABLED:
        raise TypeError("auth must be a TokenSet or 'disabled'")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        taskq.close()

    app = FastAPI(
        title="taskq intake",
        version="1",
        description="Submit taskq tasks and read their status.",
        lifespan=lifespan,
    )
    app.state.client = taskq

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, _validation_detail(exc))

    @app.exception_handler(InvalidTask)
    async def on_invalid_task(_request: Request, exc: InvalidTask) -> JSONResponse:
        return _problem(422, str(exc))

    @app.exception_handler(TaskNotFound)
    async def on_task_not_found(_request: Request, exc: TaskNotFound) -> JSONResponse:
        return _problem(404, str(exc))

    @app.exception_handler(QueueNotFound)
    async def on_queue_not_found(_request: Request, exc: QueueNotFound) -> JSONResponse:
        return _problem(404, str(exc))

    @app.exception_handler(TaskConflict)
    async def on_conflict(_request: Request, exc: TaskConflict) -> JSONResponse:
        return _problem(409, str(exc))

    @app.exception_handler(TaskqError)
    async def on_unavailable(request: Request, exc: TaskqError) -> JSONResponse:
        log.warning("%s %s: 503: %s", request.method, request.url.path, exc)
        return _problem(503, _public_reason(exc))

    @app.post(
        "/v1/tasks", status_code=202, response_model=Submitted, responses={**_ERRORS, **auth_errors}, dependencies=can_submit
    )
    def submit_task(body: TaskSubmission) -> Submitted:
        """Submit one task; it is recorded as `queued` and published before the answer."""
        message = taskq.message(
            body.name,
            body.args,
            body.kwargs,
            queue=body.queue,
            priority=body.priority,
            task_id=body.task_id,
            max_retries=body.max_retries,
            timeout=body.timeout,
            countdown=body.countdown,
            eta=body.eta,
        )
        receipt = taskq.submit_many([message])
        return Submitted(id=message.id, queue=message.queue, created=receipt.existing == 0)

    @app.post(
        "/v1/tasks:batch",
        status_code=202,
        response_model=BatchSubmitted,
        responses={**_ERRORS, **auth_errors},
        dependencies=can_submit,
    )
    def submit_batch(body: BatchSubmission) -> BatchSubmitted:
        """Submit many tasks with confirms pipelined; every task is validated before any is sent."""
        messages = [
            taskq.message(
                t.name,
                t.args,
                t.kwargs,
                queue=t.queue,
                priority=t.priority,
                task_id=t.task_id,
                max_retries=t.max_retries,
                timeout=t.timeout,
                countdown=t.countdown,
                eta=t.eta,
            )
            for t in body.tasks
        ]
        receipt = taskq.submit_many(messages)
        return BatchSubmitted(ids=receipt.ids, published=receipt.published, existing=receipt.existing)

    @app.get(
        "/v1/tasks/{task_id}",
        response_model=TaskStatus,
        responses={**_ERRORS, **_NOT_FOUND, **auth_errors},
        dependencies=can_read,
    )
    async def get_task(
        task_id: str = Path(pattern=TASK_ID_PATTERN),
        wait: float = Query(
            default=0,
            ge=0,
            le=MAX_WAIT_S,
            description=f"Long poll: answer when the task is final or after this many seconds (at most {MAX_WAIT_S:g}).",
        ),
    ) -> TaskStatus:
        """A task's state, attempts, timestamps, result or error; with `wait`, once it is final or the wait is over."""
        document = await run_in_threadpool(taskq.status, task_id)
        deadline = time.monotonic() + wait
        interval = LONG_POLL_FIRST_INTERVAL_S
        while not _is_final(document) and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 1.5, LONG_POLL_MAX_INTERVAL_S)
            document = await run_in_threadpool(taskq.status, task_id)
        return _status_model(document)

    @app.post(
        "/v1/tasks/{task_id}:cancel",
        response_model=Cancelled,
        responses={**_ERRORS, **_NOT_FOUND, 409: {"description": "The task is final already"}, **auth_errors},
        dependencies=can_submit,
    )
    def cancel_task(task_id: str = Path(pattern=TASK_ID_PATTERN)) -> Cancelled | JSONResponse:
        """Cancel a queued, running or retrying task (see `Client.cancel`); 409 when it is final already."""
        result = taskq.cancel(task_id)
        if not result.cancelled:
            return _problem(409, f"not cancelled: the task is already {result.state.value}")
        return Cancelled(id=result.task_id, state=result.state, notified=result.notified)

    @app.get(
        "/v1/queues/{name}",
        response_model=QueueStatus,
        responses={**_ERRORS, **_NOT_FOUND, **auth_errors},
        dependencies=can_read,
    )
    def get_queue(name: str = Path(pattern=QUEUE_NAME_PATTERN)) -> QueueStatus:
        """Ready messages, consumers, dead letters and task counts by state of a queue."""
        info = taskq.queue_info(name)
        return QueueStatus(name=info.name, ready=info.ready, consumers=info.consumers, dead=info.dead, counts=info.counts)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """The process is up (no dependency is checked)."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: _ERRORS[503]})
    def readyz() -> Health:
        """The broker and the store both answer."""
        taskq.ping()
        return Health(status="ready")

    app.include_router(dashboard_router(taskq, auth))  # the browser dashboard at `/` (taskq.http.dashboard)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app
