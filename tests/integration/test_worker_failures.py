"""Failure paths of the worker: retry with backoff then dead, hard timeout, and malformed messages."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from worker_procs import Services, dead_letters, publish_raw, workers

from taskq.client import Client
from taskq.core.topology import DEAD_REASON_HEADER
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll

pytestmark = [pytest.mark.services]


def test_retry_backoff_then_dead(svc: Services, client: Client, store: TaskStore, tmp_path: Path) -> None:
    task_id = client.submit("fail", kwargs={"message": "boom"}, max_retries=2)
    with workers(svc, tmp_path, retry_initial=0.3, retry_max=1) as (worker,):
        poll(lambda: (store.get(task_id) or {}).get("state") == "dead", timeout=60, what="the task to be dead")
        retrying = [e for e in worker.events_named("task.retrying") if e["task_id"] == task_id]
        dead_events = [e for e in worker.events_named("task.dead") if e["task_id"] == task_id]
    document = store.get(task_id)
    assert document is not None
    assert document["attempts"] == 3
    assert document["error"]["type"] == "ExampleFailure"
    assert document["error"]["message"] == "boom"
    assert "ExampleFailure" in document["error"]["traceback"]
    assert set(document["timestamps"]) >= {"queued", "running", "retrying", "dead"}
    assert [e["attempt"] for e in retrying] == [1, 2]
    assert all(0 < e["delay_ms"] <= 1000 for e in retrying)
    assert len(dead_events) == 1
    ((properties, body),) = dead_letters(svc, 1)
    assert json.loads(body)["id"] == task_id
    assert "retries exhausted after attempt 3" in properties.headers[DEAD_REASON_HEADER]


def test_flaky_task_succeeds_on_a_retry(svc: Services, client: Client, store: TaskStore, tmp_path: Path) -> None:
    counter = tmp_path / "flaky-count"
    task_id = client.submit("flaky", args=[str(counter)], kwargs={"failures": 2}, max_retries=3)
    with workers(svc, tmp_path, retry_initial=0.2, retry_max=0.5):
        poll(lambda: (store.get(task_id) or {}).get("state") == "succeeded", timeout=60, what="the flaky task to succeed")
    document = store.get(task_id)
    assert document is not None
    assert document["attempts"] == 3
    assert document["result"] == 3
    assert counter.read_text() == "3"


def test_hard_timeout_stops_the_task_and_counts_as_failure(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    slow = client.submit("sleep", args=[30], timeout=0.5, max_retries=0)
    quick = client.submit("echo", args=["after"])
    with workers(svc, tmp_path, concurrency=1) as (worker,):
        poll(lambda: (store.get(slow) or {}).get("state") == "dead", timeout=30, what="the slow task to time out")
        poll(lambda: (store.get(quick) or {}).get("state") == "succeeded", timeout=30, what="the next task to run")
        assert worker.alive()
    document = store.get(slow)
    assert document is not None
    assert document["error"]["type"] == "TaskTimeout"
    elapsed = (document["timestamps"]["dead"] - document["timestamps"]["running"]).total_seconds()
    assert elapsed < 10


def _fuzzed_bodies(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    valid = {"id": "x1", "name": "echo", "args": [], "kwargs": {}, "queue": "q", "created_at": "2026-01-01T00:00:00Z"}
    bodies: list[bytes] = []
    for index in range(count):
        kind = index % 8
        if kind == 0:
            bodies.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        elif kind == 1:
            bodies.append(json.dumps(rng.choice([[], 1, "text", None, 3.5, [1, 2]])).encode())
        elif kind == 2:
            broken = dict(valid, id=f"fz{index}")
            broken.pop(rng.choice(["name", "queue", "created_at", "id"]))
            bodies.append(json.dumps(broken).encode())
        elif kind == 3:
            bodies.append(json.dumps(dict(valid, id=f"fz{index}", name=f"no_such_task_{index}")).encode())
        elif kind == 4:
            bodies.append(json.dumps(dict(valid, id=f"fz{index}", priority=rng.choice([-1, 999, "high"]))).encode())
        elif kind == 5:
            bodies.append(json.dumps(dict(valid, id=f"fz{index}", extra_field=True)).encode())
        elif kind == 6:
            bodies.append(b'{"id": "fz' + str(index).encode() + b'", "name": ')
        else:
            bodies.append(json.dumps(dict(valid, id=" bad id ", args="not a list")).encode())
    return bodies


def test_fuzzed_bodies_are_dead_lettered_with_reasons_and_the_worker_keeps_running(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    bodies = _fuzzed_bodies(200, seed=7)
    client.submit("echo", args=["warm-up"])  # declares the queue topology
    with workers(svc, tmp_path) as (worker,):
        publish_raw(svc.amqp_url, svc.queue, bodies)
        letters = dead_letters(svc, len(bodies), timeout=120)
        assert worker.alive()
        after = client.submit("echo", args=["still alive"])
        poll(lambda: (store.get(after) or {}).get("state") == "succeeded", timeout=30, what="a valid task after the fuzz")
    assert len(letters) == len(bodies)
    assert sorted(body for _, body in letters) == sorted(bodies)
    reasons = [properties.headers[DEAD_REASON_HEADER] for properties, _ in letters]
    assert all(reasons)
    assert any(r.startswith("body is not JSON") for r in reasons)
    assert any(r.startswith("schema violation") for r in reasons)
    assert any("no task registered" in r for r in reasons)
