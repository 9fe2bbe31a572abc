"""The worker runtime keeps its promise on real RabbitMQ and the real store: nothing stuck, nothing lost.

Each test reproduces a failure seen before the runtime was rebuilt (poison results and bodies that
stalled a worker with green probes, a replica-set URI that crashed it, "hard" timeouts that did not
stop C calls, decorator limits that were ignored, async tasks recorded as a coroutine's repr) or a
guarantee of the new one (lost children, memory caps, delivery limits, supervised stages, context and
progress in every pool).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from worker_procs import Services, WorkerProcess, count_in_state, dead_letters, publish_raw, workers

from taskq.client import Client
from taskq.core.states import TaskState
from taskq.core.topology import DEAD_REASON_HEADER, dead_queue
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll
from taskq_dev.services import RabbitMQService

pytestmark = [pytest.mark.services]

TEST_TASKS = "taskq.examples,worker_test_tasks"
POOLS = ["process", "thread", "asyncio"]


def _document(store: TaskStore, task_id: str) -> dict:
    return store.get(task_id) or {}


def _state(store: TaskStore, task_id: str) -> str | None:
    return _document(store, task_id).get("state")


def _wait_states(store: TaskStore, ids: list[str], states: set[str], timeout: float, what: str) -> None:
    poll(lambda: all(_state(store, i) in states for i in ids), timeout=timeout, interval=0.3, what=what)


@contextmanager
def _client(svc: Services, queue_type: str) -> Iterator[Client]:
    settings = Settings(
        amqp_url=svc.amqp_url, mongodb_uri=svc.mongodb_uri, database=svc.database, queue=svc.queue, queue_type=queue_type
    )
    producer = Client(settings)
    try:
        yield producer
    finally:
        producer.close()


def _livez(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).status_code


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_unstorable_results_and_a_deep_body_do_not_stall_the_worker(
    pool: str, svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    bad = [client.submit("unstorable", kwargs={"kind": kind}) for kind in ("big_int", "surrogate", "circular", "nested_list")]
    publish_raw(svc.amqp_url, svc.queue, [b'{"a":' * 100_000 + b"1" + b"}" * 100_000])
    good = [client.submit("echo", args=[i]) for i in range(50)]
    with workers(svc, tmp_path, pool=pool, concurrency=2) as (worker,):
        _wait_states(store, good, {"succeeded"}, 120, "the 50 good tasks to succeed")
        _wait_states(store, bad, {"failed"}, 30, "the 4 unstorable results to end failed")
        assert worker.alive()
        assert _livez(worker.health_port()) == 200
    for task_id in bad:
        document = _document(store, task_id)
        assert document["error"]["type"] == "UnstorableResult", document["error"]
        assert document["result"] is None
    ((properties, body),) = dead_letters(svc, 1)
    assert body.startswith(b'{"a":{"a":')
    assert "nested deeper" in properties.headers[DEAD_REASON_HEADER]


def test_a_replica_set_uri_with_secrets_starts_the_worker_and_leaks_nothing(svc: Services, tmp_path: Path) -> None:
    secret = "Sup3rS3cret"
    uri = f"mongodb://taskq:{secret}@127.0.0.1:1,127.0.0.1:2/?replicaSet=rs0&serverSelectionTimeoutMS=500"
    with workers(svc, tmp_path, mongodb_uri=uri) as (worker,):
        started = worker.events_named("worker.started")[0]
        assert started["store"].startswith("mongodb://taskq:***@127.0.0.1:1,127.0.0.1:2/")
        assert _livez(worker.health_port()) == 200
        poll(
            lambda: worker.events_named("store.unavailable") or worker.events_named("heartbeat.failed"),
            timeout=30,
            what="a store error",
        )
    assert secret not in worker.log_path.read_text()


def test_an_invalid_store_uri_is_a_clear_configuration_error_without_secrets(svc: Services, tmp_path: Path) -> None:
    secret = "Sup3rS3cret"
    uri = f"mongodb://taskq:{secret}@h1:27017,h2:27017/?replicaSet=rs0&tls=false&tlsCertificateKeyFilePassword={secret}"
    worker = WorkerProcess(tmp_path / "invalid-uri.log", svc.env(mongodb_uri=uri)).start()
    try:
        assert worker.wait(30) == 2
    finally:
        worker.stop()
    (error,) = worker.events_named("worker.config_error")
    assert "invalid store URI mongodb://taskq:***@h1:27017,h2:27017/" in error["error"]
    assert "tls" in error["error"].lower()
    assert secret not in worker.log_path.read_text()


def test_process_pool_kills_a_blocked_task_at_its_timeout_and_the_retry_starts_after_the_kill(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    stamps = tmp_path / "stamps.txt"
    task_id = client.submit("stamped", args=[str(stamps), 30], timeout=2, max_retries=1)
    with workers(svc, tmp_path, pool="process", task_modules=TEST_TASKS, retry_initial=0.2, retry_max=0.3):
        poll(lambda: _state(store, task_id) == "dead", timeout=60, what="both attempts to time out")
    document = _document(store, task_id)
    assert document["error"]["type"] == "TaskTimeout"
    lines = [line.split() for line in stamps.read_text().splitlines()]
    assert [(kind, attempt) for kind, attempt, _ in lines] == [("start", "1"), ("start", "2")], lines  # never an "end"
    first_start, second_start = float(lines[0][2]), float(lines[1][2])
    assert 2.0 <= second_start - first_start < 15.0
    # Attempt 1 was recorded as timed out (its child killed) before attempt 2 started.
    retrying_at = document["timestamps"]["retrying"].timestamp()
    assert first_start + 2.0 <= retrying_at + 0.5
    assert retrying_at <= second_start + 0.05


def test_a_task_that_kills_its_child_is_worker_lost_then_dead_and_100_others_succeed_on_the_same_worker(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    killer = client.submit("exit", kwargs={"code": 1}, max_retries=2)
    others = client.submit_many({"name": "echo", "args": [i]} for i in range(100)).ids
    with workers(svc, tmp_path, pool="process", concurrency=2, retry_initial=0.2, retry_max=0.3) as (worker,):
        pid = worker.pid
        _wait_states(store, others, {"succeeded"}, 120, "the 100 normal tasks")
        poll(lambda: _state(store, killer) == "dead", timeout=60, what="the killer task to be dead")
        assert worker.alive() and worker.pid == pid
        retried = [e for e in worker.events_named("task.retrying") if e["task_id"] == killer]
    document = _document(store, killer)
    assert document["error"]["type"] == "WorkerLost"
    assert "exited with code 1" in document["error"]["message"]
    assert document["attempts"] == 3
    assert [e["attempt"] for e in retried] == [1, 2]


def test_a_child_over_its_memory_cap_is_killed_and_the_attempt_fails(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    hog = client.submit("allocate", kwargs={"mib": 400, "hold_s": 5}, max_retries=0)
    after = client.submit("echo", args=["after"])
    with workers(svc, tmp_path, pool="process", concurrency=1, max_memory_per_child_mb=150) as (worker,):
        poll(lambda: _state(store, hog) == "dead", timeout=60, what="the hog to be killed")
        poll(lambda: _state(store, after) == "succeeded", timeout=60, what="the next task on a fresh child")
        assert worker.alive()
    assert _document(store, hog)["error"]["type"] == "MemoryLimitExceeded"


@pytest.mark.parametrize("pool", POOLS)
def test_async_tasks_context_and_progress_in_every_pool(
    pool: str, svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    awaited = client.submit("async_sleep", kwargs={"seconds": 0.2, "value": {"ok": pool}})
    context = client.submit("context", timeout=30)
    progress = client.submit("progress", kwargs={"steps": 3, "interval_s": 1.2})
    with workers(svc, tmp_path, pool=pool, concurrency=2):
        _wait_states(store, [awaited, context, progress], {"succeeded"}, 60, "the three tasks")
    assert _document(store, awaited)["result"] == {"ok": pool}
    seen = _document(store, context)["result"]
    assert (seen["id"], seen["name"], seen["attempt"], seen["queue"]) == (context, "context", 1, svc.queue)
    assert seen["deadline"]
    document = _document(store, progress)
    assert document["result"] >= 2
    assert document["progress"]["fraction"] > 0
    assert document["progress"]["message"].startswith("step ")


def test_retry_rules_decorator_limits_and_worker_caps(svc: Services, client: Client, store: TaskStore, tmp_path: Path) -> None:
    rejected = client.submit("reject")
    not_retried = client.submit("picky", kwargs={"error": "missing"}, max_retries=3)
    retried = client.submit("picky", kwargs={"error": "os"}, max_retries=1)
    decorator = client.submit("one_retry")
    capped = client.submit("greedy", kwargs={"seconds": 4}, timeout=100, max_retries=9)
    with workers(
        svc,
        tmp_path,
        pool="process",
        concurrency=2,
        task_modules=TEST_TASKS,
        retry_initial=0.2,
        retry_max=0.3,
        task_timeout=2,
        max_retries=2,
    ) as (worker,):
        _wait_states(store, [rejected, not_retried], {"failed"}, 60, "rejected tasks to end failed")
        _wait_states(store, [retried, decorator, capped], {"dead"}, 90, "retried tasks to end dead")
        capped_events = worker.events_named("task.limit_capped")
    assert _document(store, rejected)["attempts"] == 1
    assert _document(store, not_retried)["attempts"] == 1
    assert _document(store, retried)["attempts"] == 2
    assert _document(store, decorator)["attempts"] == 2  # max_retries=1 from the decorator
    greedy = _document(store, capped)
    assert greedy["attempts"] == 3  # the worker's max_retries=2 caps the producer's 9
    assert greedy["error"]["type"] == "TaskTimeout"  # the worker's 2 s caps the producer's 100 s
    assert {(e["name"], e["setting"]) for e in capped_events} >= {("greedy", "timeout"), ("greedy", "max_retries")}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_task_that_kills_its_whole_worker_is_dead_after_the_delivery_limit(
    queue_type: str, svc: Services, store: TaskStore, tmp_path: Path
) -> None:
    # In the thread pool os._exit ends the worker process itself: only the delivery count stops the loop.
    # Classic queues: counted in the task document; quorum queues: the broker's x-delivery-count.
    with _client(svc, queue_type) as producer:
        task_id = producer.submit("exit", kwargs={"code": 7})
    exits = []
    for run in range(8):
        if _state(store, task_id) == "dead":
            break
        worker = WorkerProcess(
            tmp_path / f"run-{run}.log", svc.env(pool="thread", max_deliveries=3, queue_type=queue_type)
        ).start()
        try:
            poll(lambda: not worker.alive() or _state(store, task_id) == "dead", timeout=30, what="the worker to die or bury")
            if not worker.alive():
                exits.append(worker.wait(5))
        finally:
            worker.stop()
    document = _document(store, task_id)
    assert document["state"] == "dead"
    assert document["error"]["type"] == "DeliveryLimit"
    assert len(exits) == 3 and set(exits) == {7}
    ((properties, _),) = dead_letters(svc, 1)
    assert properties.headers[DEAD_REASON_HEADER].startswith("delivery-limit: delivered 4 times (limit 3)")


def test_a_crashed_stage_fails_livez_exits_nonzero_and_leaves_its_work_to_another_worker(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    first_batch = client.submit("echo", args=["first"])
    with workers(svc, tmp_path, pool="thread", concurrency=1, task_modules=TEST_TASKS, test_fault="committer-crash") as (broken,):
        poll(lambda: _state(store, first_batch) == "succeeded", timeout=30, what="the first flush")
        port = broken.health_port()
        later = [client.submit("echo", args=[i]) for i in range(5)]
        poll(lambda: not broken.alive(), timeout=30, what="the broken worker to exit")
        assert broken.wait(5) == 3
        failed = broken.events_named("worker.stage_failed")
        assert failed and failed[0]["stage"] == "committer"
        assert "injected fault" in failed[0]["error"]
    with pytest.raises(httpx.HTTPError):
        _livez(port)
    assert not [i for i in later if _state(store, i) == "succeeded"]  # the broken worker recorded (and acked) none
    with workers(svc, tmp_path, pool="thread") as (healthy,):
        _wait_states(store, later, {"succeeded"}, 60, "the unacked tasks to run on a healthy worker")
        assert healthy.alive()


def test_sigterm_drain_with_the_process_pool_finishes_running_work(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    running = client.submit("sleep", args=[2])
    with workers(svc, tmp_path, pool="process", concurrency=1, grace_seconds=15) as (worker,):
        poll(lambda: _state(store, running) == "running", timeout=30, what="the task to start")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert _state(store, running) == "succeeded"
    assert count_in_state(store, TaskState.RUNNING) == 0
    assert worker.events_named("worker.stopped")[0]["exit_status"] == 0


def test_a_quorum_queue_runs_retries_and_dead_letters(
    svc: Services, store: TaskStore, rabbitmq: RabbitMQService, tmp_path: Path
) -> None:
    with _client(svc, "quorum") as producer:
        good = [producer.submit("echo", args=[i], priority=9 if i % 2 else 0) for i in range(20)]
        failing = producer.submit("fail", max_retries=1)
    with workers(svc, tmp_path, queue_type="quorum", retry_initial=0.2, retry_max=0.3):
        _wait_states(store, good, {"succeeded"}, 60, "20 tasks on a quorum queue")
        poll(lambda: _state(store, failing) == "dead", timeout=60, what="the failing task to be dead")
    for name in (svc.queue, dead_queue(svc.queue)):
        url = f"{rabbitmq.management_base}/api/queues/{quote(rabbitmq.vhost, safe='')}/{quote(name, safe='')}"
        assert httpx.get(url, auth=rabbitmq.management_auth, timeout=5).json()["type"] == "quorum"
    assert _document(store, failing)["attempts"] == 2
    ((properties, _),) = dead_letters(svc, 1)
    assert "retries exhausted after attempt 2" in properties.headers[DEAD_REASON_HEADER]


def test_a_refused_retry_publish_counts_as_a_delivery_and_ends_dead_at_the_limit(
    svc: Services, store: TaskStore, rabbitmq: RabbitMQService, tmp_path: Path
) -> None:
    # A broker user that may not create or publish to delay queues (`Q.retry.<ms>`): every retry publish
    # is refused. Before, the delivery was requeued and rerun forever; now each return is a counted
    # delivery and the task ends dead at the limit, in Q.dead (which the user may still write).
    user, password = f"limited-{svc.queue}", "limited-pw"
    api, auth = rabbitmq.management_base, rabbitmq.management_auth
    vhost = quote(rabbitmq.vhost, safe="")
    not_retry = r"^(?!.*\.retry\.).*$"
    assert httpx.put(f"{api}/api/users/{user}", json={"password": password, "tags": ""}, auth=auth, timeout=10).status_code < 300
    permissions = {"configure": not_retry, "write": not_retry, "read": ".*"}
    assert httpx.put(f"{api}/api/permissions/{vhost}/{user}", json=permissions, auth=auth, timeout=10).status_code < 300
    try:
        with _client(svc, "classic") as producer:
            task_id = producer.submit("fail", max_retries=3)
        limited_url = svc.amqp_url.replace("guest:guest@", f"{user}:{password}@")
        with workers(svc, tmp_path, amqp_url=limited_url, max_deliveries=3) as (worker,):
            poll(lambda: _state(store, task_id) == "dead", timeout=60, what="the task to end dead")
            refused = worker.events_named("broker.republish_refused")
            assert worker.alive()
        document = _document(store, task_id)
        assert document["error"]["type"] == "DeliveryLimit"
        assert document["redeliveries"]["a1"] == 3
        assert len(refused) == 3  # one refused retry per delivery before the limit
        ((properties, _),) = dead_letters(svc, 1)
        assert properties.headers[DEAD_REASON_HEADER].startswith("delivery-limit")
    finally:
        httpx.delete(f"{api}/api/users/{user}", auth=auth, timeout=10)
