"""The HTTP intake service on real servers: submit, batch, status, queue, health, and its error answers
(422 with a reason, 404, 413, 503 without credentials or hosts). Requests carry a submit+read token;
the token checks themselves are in test_http_auth.py."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from taskq.errors import QueueNotFound
from taskq.http.app import create_app
from taskq.http.auth import TokenSet
from taskq.settings import Settings

TOKEN = "test-submit-read-0123456789abcdef"
AUTH = TokenSet(TokenSet.parse(f"submit,read {TOKEN}\n", "test"))
HEADERS = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.services


@pytest.fixture
def settings(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str) -> Settings:
    return Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, auth=AUTH, max_body_bytes=64 * 1024)
    with TestClient(app, headers=HEADERS) as http:
        yield http
        with contextlib.suppress(QueueNotFound):
            app.state.client.purge(settings.queue)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_submit_then_read_status_and_queue(api: TestClient, queue_name: str) -> None:
    answer = api.post("/v1/tasks", json={"name": "echo", "args": [1], "kwargs": {"k": "v"}, "priority": 4})
    assert answer.status_code == 202
    body = answer.json()
    assert body["queue"] == queue_name and body["created"] is True

    status = api.get(f"/v1/tasks/{body['id']}")
    assert status.status_code == 200
    doc = status.json()
    assert (doc["state"], doc["args"], doc["kwargs"], doc["priority"], doc["attempts"]) == ("queued", [1], {"k": "v"}, 4, 0)
    assert "queued" in doc["timestamps"]

    queue = api.get(f"/v1/queues/{queue_name}").json()
    assert (queue["ready"], queue["consumers"], queue["dead"], queue["counts"]["queued"]) == (1, 0, 0, 1)


def test_task_id_is_an_idempotency_key(api: TestClient, queue_name: str) -> None:
    first = api.post("/v1/tasks", json={"name": "echo", "task_id": "invoice-7"}).json()
    second = api.post("/v1/tasks", json={"name": "echo", "task_id": "invoice-7"}).json()
    assert (first["created"], second["created"], second["id"]) == (True, False, "invoice-7")
    assert api.get(f"/v1/queues/{queue_name}").json()["ready"] == 1


def test_batch_is_validated_as_a_whole(api: TestClient, queue_name: str) -> None:
    refused = api.post("/v1/tasks:batch", json={"tasks": [{"name": "echo"}, {"name": "echo", "args": [2**70]}]})
    assert refused.status_code == 422 and "64-bit" in refused.json()["detail"]

    accepted = api.post("/v1/tasks:batch", json={"tasks": [{"name": "echo", "args": [i]} for i in range(50)]})
    assert accepted.status_code == 202
    assert accepted.json()["published"] == 50 and len(accepted.json()["ids"]) == 50
    assert api.get(f"/v1/queues/{queue_name}").json()["ready"] == 50


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"args": []}, "body.name: Field required"),
        ({"name": "no spaces"}, "body.name"),
        ({"name": "echo", "priority": -1}, "body.priority"),
        ({"name": "echo", "surprise": 1}, "body.surprise"),
        ({"name": "echo", "kwargs": {"a.b": 1}}, "may not contain"),
        ({"name": "echo", "args": [{"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": {"n": {"o": {"p": {"q": {"r": {"s": {"t": {"u": {"v": {"w": {"x": {"y": {"z": {"A": {"B": {"C": {"D": {"E": {"F": {"G": 1}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}]}, "nested deeper"),
        ({"name": "echo", "args": [[1, 2]]}, "array directly inside an array"),
    ],
)
def test_invalid_submissions_get_422_with_the_reason(api: TestClient, payload: dict, reason: str) -> None:
    answer = api.post("/v1/tasks", json=payload)
    assert answer.status_code == 422
    assert reason in answer.json()["detail"]


def test_malformed_bodies_and_unknown_resources(api: TestClient) -> None:
    assert api.post("/v1/tasks", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert api.post("/v1/tasks:batch", json={"tasks": []}).status_code == 422
    too_large = api.post("/v1/tasks", json={"name": "echo", "args": ["x" * 70_000]})
    assert too_large.status_code == 413 and "larger than" in too_large.json()["detail"]
    assert api.get("/v1/tasks/never-submitted").status_code == 404
    assert api.get("/v1/tasks/bad%20id").status_code == 422
    assert api.get("/v1/queues/never-declared").status_code == 404


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}


def test_unavailable_broker_is_503_without_credentials_or_host(mongodb_uri: str, database_name: str) -> None:
    port = _free_port()
    url = f"amqp://user:s3cret@127.0.0.1:{port}/%2F"
    app = create_app(Settings(amqp_url=url, mongodb_uri=mongodb_uri, database=database_name, queue="q"), auth=AUTH)
    with TestClient(app, headers=HEADERS) as http:
        for answer in (http.post("/v1/tasks", json={"name": "echo"}), http.get("/readyz"), http.get("/v1/queues/q")):
            assert answer.status_code == 503
            assert answer.json() == {"detail": "broker unavailable"}
            assert "s3cret" not in answer.text and "127.0.0.1" not in answer.text and str(port) not in answer.text
        assert http.get("/healthz").status_code == 200


def test_unavailable_store_is_503_without_host(amqp_url: str, database_name: str) -> None:
    port = _free_port()
    uri = f"mongodb://user:s3cret@127.0.0.1:{port}/?serverSelectionTimeoutMS=300"
    app = create_app(Settings(amqp_url=amqp_url, mongodb_uri=uri, database=database_name, queue="q"), auth=AUTH)
    with TestClient(app, headers=HEADERS) as http:
        for answer in (http.post("/v1/tasks", json={"name": "echo"}), http.get("/readyz"), http.get("/v1/tasks/some-id")):
            assert answer.status_code == 503
            assert answer.json() == {"detail": "store unavailable"}
            assert "s3cret" not in answer.text and "127.0.0.1" not in answer.text and str(port) not in answer.text
