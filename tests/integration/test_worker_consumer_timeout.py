"""The consumer timeout on RabbitMQ 4.0: no delivery waits in a worker until the broker times it out.

RabbitMQ 4.0 counts the consumer timeout from delivery and takes it from the queue (argument or
policy) or its own `consumer_timeout`; it ignores a per-consumer argument. Before, a prefetched
message waiting behind long tasks used the timeout up: the broker closed the channel, dropped the
prefetched deliveries and redelivered a running task, which ran twice. Now the work queue's timeout
covers one lease plus one attempt, the default prefetch is one look-ahead per slot, and a worker hands
back unstarted deliveries whose lease ran out (`taskq.core.limits`). Executions are counted in a
ledger file the task appends to, outside the store.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from worker_procs import Services, workers

from taskq.client import Client
from taskq.core.limits import lease_s, queue_consumer_timeout_ms
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll
from taskq_dev.services import RabbitMQService

pytestmark = [pytest.mark.services]


def _needs_consumer_timeouts(version: tuple[int, ...]) -> None:
    if version < (3, 12):
        pytest.skip(f"RabbitMQ {'.'.join(map(str, version))} does not enforce consumer timeouts from the queue")


def _executions(ledger: Path) -> Counter[str]:
    return Counter(line.split()[0] for line in ledger.read_text().splitlines()) if ledger.exists() else Counter()


def _all_succeeded(store: TaskStore, ids: list[str]) -> bool:
    return store.tasks.count_documents({"state": "succeeded"}) == len(ids)


def test_the_queue_carries_the_timeout_and_the_default_prefetch_is_one_look_ahead_per_slot(
    svc: Services, rabbitmq: RabbitMQService, tmp_path: Path
) -> None:
    with workers(svc, tmp_path, concurrency=3, task_timeout=20) as (worker,):
        url = f"{rabbitmq.management_base}/api/queues/{quote(rabbitmq.vhost, safe='')}/{quote(svc.queue, safe='')}"
        arguments = httpx.get(url, auth=rabbitmq.management_auth, timeout=5).json()["arguments"]
        connected = worker.events_named("broker.connected")[0]
    assert arguments["x-consumer-timeout"] == queue_consumer_timeout_ms(20)
    assert connected["consumer_timeout_ms"] == queue_consumer_timeout_ms(20)
    assert connected["prefetch"] == 6


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_prefetch_64_concurrency_1_four_second_tasks_each_run_once_on_rabbitmq4(
    svc: Services, client: Client, store: TaskStore, rabbitmq_version: tuple[int, ...], tmp_path: Path
) -> None:
    # The reported scenario: prefetch 64 (the old default), concurrency 1, 45 tasks of 4 s, timeout 5 s.
    _needs_consumer_timeouts(rabbitmq_version)
    ledger = tmp_path / "ledger.txt"
    ids = client.submit_many({"name": "ledger", "args": [str(ledger), 4], "timeout": 5} for _ in range(45)).ids
    with workers(svc, tmp_path, concurrency=1, prefetch=64, task_timeout=5) as (worker,):
        poll(lambda: _all_succeeded(store, ids), timeout=400, interval=2, what="45 tasks")
        lost = worker.events_named("broker.lost")
        stale = worker.events_named("task.stale")
        returned = sum(e["returned"] for e in worker.events_named("deliveries.lease_expired"))
    runs = _executions(ledger)
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}, {k: v for k, v in runs.items() if v > 1}
    assert not lost and not stale
    # 45 x 4 s = 180 s of work behind one slot: the lease (of ~51 s) handed the waiting ones back.
    assert lease_s(5) < 60 and returned > 0
    assert store.tasks.count_documents({"redeliveries": {"$exists": True}}) == 0  # handed back, not counted as failed deliveries


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_readme_taskqueue_numbers_64_tasks_of_40_s_each_run_once_on_rabbitmq4(
    svc: Services, client: Client, store: TaskStore, rabbitmq_version: tuple[int, ...], tmp_path: Path
) -> None:
    # The README's example TaskQueue: prefetch 16, concurrency 4, timeoutSeconds 60; four replicas.
    _needs_consumer_timeouts(rabbitmq_version)
    ledger = tmp_path / "ledger.txt"
    ids = client.submit_many({"name": "ledger", "args": [str(ledger), 40]} for _ in range(64)).ids
    with workers(svc, tmp_path, count=4, concurrency=4, prefetch=16, task_timeout=60) as running:
        poll(lambda: _all_succeeded(store, ids), timeout=500, interval=3, what="64 tasks")
        lost = [e for w in running for e in w.events_named("broker.lost")]
    runs = _executions(ledger)
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}, {k: v for k, v in runs.items() if v > 1}
    assert not lost
