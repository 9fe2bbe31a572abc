"""Bearer-token authentication of the HTTP intake on real servers: 401 without or with a wrong token,
403 for a token without the scope, submit and read with the right ones, health endpoints open, the
OpenAPI document declaring the scheme, and `taskq-api` refusing to start without tokens (exit 2)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from taskq.errors import QueueNotFound
from taskq.http.app import create_app
from taskq.http.auth import TokenSet
from taskq.settings import Settings

pytestmark = pytest.mark.services

SUBMIT_READ = "both-0123456789abcdef0123456789"
READ_ONLY = "read-0123456789abcdef0123456789"
SUBMIT_ONLY = "submit-0123456789abcdef01234567"
TOKEN_FILE = f"""# scopes      token
submit,read  {SUBMIT_READ}
read         {READ_ONLY}

submit       {SUBMIT_ONLY}
"""


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE)
    return path


@pytest.fixture
def api(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str, token_file: Path) -> Iterator[TestClient]:
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)
    app = create_app(settings, auth=TokenSet.load(token_file))
    with TestClient(app) as http:
        yield http
        with contextlib.suppress(QueueNotFound):
            app.state.client.purge(queue_name)


def test_no_token_or_a_wrong_one_is_401_with_a_bearer_challenge(api: TestClient, queue_name: str) -> None:
    wrong = [
        {},
        _bearer("not-a-configured-token-at-all-000"),
        _bearer(SUBMIT_READ[:-1]),
        _bearer(SUBMIT_READ + "x"),
        {"Authorization": f"Basic {SUBMIT_READ}"},
        {"Authorization": "Bearer"},
    ]
    for headers in wrong:
        for answer in (
            api.post("/v1/tasks", json={"name": "echo"}, headers=headers),
            api.post("/v1/tasks:batch", json={"tasks": [{"name": "echo"}]}, headers=headers),
            api.get("/v1/tasks/some-id", headers=headers),
            api.get(f"/v1/queues/{queue_name}", headers=headers),
        ):
            assert answer.status_code == 401, (headers, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert answer.json() == {"detail": "a valid bearer token is required"}
    assert api.get(f"/v1/queues/{queue_name}", headers=_bearer(READ_ONLY)).status_code == 404  # nothing was submitted


def test_a_token_without_the_scope_is_403(api: TestClient, queue_name: str) -> None:
    for body_path, body in (("/v1/tasks", {"name": "echo"}), ("/v1/tasks:batch", {"tasks": [{"name": "echo"}]})):
        answer = api.post(body_path, json=body, headers=_bearer(READ_ONLY))
        assert answer.status_code == 403 and "'submit' scope" in answer.json()["detail"]
        assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    submitted = api.post("/v1/tasks", json={"name": "echo", "task_id": "scoped-1"}, headers=_bearer(SUBMIT_ONLY))
    assert submitted.status_code == 202 and submitted.json()["created"] is True
    for path in ("/v1/tasks/scoped-1", f"/v1/queues/{queue_name}"):
        answer = api.get(path, headers=_bearer(SUBMIT_ONLY))
        assert answer.status_code == 403 and "'read' scope" in answer.json()["detail"]


def test_the_right_tokens_submit_and_read(api: TestClient, queue_name: str) -> None:
    submitted = api.post("/v1/tasks", json={"name": "echo", "task_id": "auth-ok"}, headers=_bearer(SUBMIT_READ))
    assert submitted.status_code == 202
    batch = api.post("/v1/tasks:batch", json={"tasks": [{"name": "echo"}] * 3}, headers=_bearer(SUBMIT_ONLY))
    assert batch.status_code == 202 and batch.json()["published"] == 3
    status = api.get("/v1/tasks/auth-ok", headers=_bearer(READ_ONLY))
    assert status.status_code == 200 and status.json()["state"] == "queued"
    queue = api.get(f"/v1/queues/{queue_name}", headers=_bearer(SUBMIT_READ))
    assert queue.status_code == 200 and queue.json()["ready"] == 4


def test_health_endpoints_need_no_token(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    assert api.get("/openapi.json").status_code == 200


def test_the_openapi_document_declares_the_bearer_scheme(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from the service's token file (TASKQ_API_TOKENS_FILE) with the operation's scope.",
    }
    for path, method in (("/v1/tasks", "post"), ("/v1/tasks:batch", "post"), ("/v1/tasks/{task_id}", "get")):
        operation = document["paths"][path][method]
        assert operation["security"] == [{"bearerToken": []}] and {"401", "403"} <= set(operation["responses"])
    for path in ("/healthz", "/readyz"):
        assert "security" not in document["paths"][path]["get"]


def test_a_mounted_secret_directory_is_read_like_a_file(
    tmp_path: Path, amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str
) -> None:
    # The layout of a Secret volume: keys are symlinks into a hidden, timestamped directory.
    mount = tmp_path / "secret"
    data = mount / "..2026_12_01_00_00_00.000000000"
    data.mkdir(parents=True)
    (data / "ops").write_text(f"submit,read {SUBMIT_READ}\n")
    (data / "dashboard").write_text(f"read {READ_ONLY}\n")
    (mount / "..data").symlink_to(data.name)
    for key in ("ops", "dashboard"):
        (mount / key).symlink_to(f"..data/{key}")
    tokens = TokenSet.load(mount)
    assert len(tokens.tokens) == 2
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)
    with TestClient(create_app(settings, auth=tokens)) as http:
        assert http.post("/v1/tasks", json={"name": "echo"}, headers=_bearer(READ_ONLY)).status_code == 403
        assert http.post("/v1/tasks", json={"name": "echo"}, headers=_bearer(SUBMIT_READ)).status_code == 202
        http.app.state.client.purge(queue_name)  # type: ignore[attr-defined]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_api(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_API_")}
    command = [sys.executable, "-m", "taskq.http.serve", "--host", "127.0.0.1", "--port", str(_free_port()), *args]
    return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "no API tokens: set TASKQ_API_TOKENS_FILE"),
        ({"TASKQ_API_TOKENS_FILE": "/nonexistent/taskq-tokens"}, "cannot read API tokens from /nonexistent/taskq-tokens"),
        ({"TASKQ_API_AUTH": "off"}, "TASKQ_API_AUTH='off' is not valid"),
        ({"TASKQ_API_AUTH": "disabled", "TASKQ_API_TOKENS_FILE": "/x"}, "choose one"),
    ],
)
def test_taskq_api_refuses_to_start_without_tokens(env: dict[str, str], message: str) -> None:
    done = _run_api(env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskq-api: ") and message in lines[0], done.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no API tokens in"),
        ("# only a comment\n", "no API tokens in"),
        (f"admin {SUBMIT_READ}\n", ":1: unknown scope(s) admin"),
        (f"\nsubmit,read {SUBMIT_READ} extra\n", ":2: expected '<scopes> <token>'"),
        ("read short\n", ":1: a token needs 16+ characters"),
        (f"read {SUBMIT_READ}\nsubmit {SUBMIT_READ}\n", ":2: the same token as"),
    ],
)
def test_taskq_api_refuses_an_invalid_token_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    done = _run_api({"TASKQ_API_TOKENS_FILE": str(path)})
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert SUBMIT_READ not in done.stderr and "short" not in done.stderr


def test_disabled_auth_starts_with_a_warning_and_serves_without_tokens(amqp_url: str, mongodb_uri: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_API_")}
    env = {**clean, "TASKQ_API_AUTH": "disabled", "TASKQ_AMQP_URL": amqp_url, "TASKQ_MONGODB_URI": mongodb_uri}
    # Port 0: the server binds a free port itself and logs it (no race with another process for it).
    command = [sys.executable, "-m", "taskq.http.serve", "--host", "127.0.0.1", "--port", "0"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as server:
        lines: list[str] = []
        # A thread reads stderr line by line: select() on a buffered pipe misses lines already buffered.
        reader = threading.Thread(target=lambda: lines.extend(iter(server.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            running = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")

            def bound_port() -> int | None:
                found = [m for line in list(lines) if (m := running.search(line))]
                return int(found[0].group(1)) if found else None

            deadline = time.monotonic() + 90  # a cold start on a loaded 2-core machine imports slowly
            while bound_port() is None and time.monotonic() < deadline and server.poll() is None:
                time.sleep(0.1)
            seen = "".join(lines)
            port = bound_port()
            assert port is not None, seen
            assert "authentication DISABLED" in seen and "WARNING" in seen, seen
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /v1/queues/never-declared-auth HTTP/1.0\r\nHost: x\r\n\r\n")
                reply = sock.recv(4096).decode()
            assert reply.startswith("HTTP/1.1 404"), reply
        finally:
            server.terminate()
            server.wait(timeout=30)
