"""The operator's lean passive-declare reader (taskq_operator.adapters.amqp_depth) against a real RabbitMQ."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pytest
from queue_support import delete, fill

from taskq.errors import BrokerUnavailable
from taskq_dev.ports import poll
from taskq_operator.adapters import amqp_depth
from taskq_operator.adapters.amqp_depth import CHANNELS, DepthReader
from taskq_operator.adapters.broker import BrokerObserver

pytestmark = pytest.mark.services


def test_many_queues_with_missing_ones_on_every_channel_are_read_exactly(
    amqp_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More queues than two windows per channel, a missing queue every 7 (each closes its channel), consumers counted."""
    monkeypatch.setattr(amqp_depth, "WINDOW", 8)  # small windows: the top-ups and reopens happen with few queues
    monkeypatch.setattr(amqp_depth, "LOW_WATER", 2)
    names = [f"{queue_name}-{i}" for i in range(CHANNELS * 8 * 3 + 11)]
    missing = set(names[::7]) | {names[-1]}
    present = [q for q in names if q not in missing]
    fill(amqp_url, declare=present, messages={present[0]: 5, present[-1]: 3, present[len(present) // 2]: 1})
    consumer = pika.BlockingConnection(pika.URLParameters(amqp_url))
    reader = DepthReader(amqp_url, timeout_s=20)
    try:
        channel = consumer.channel()
        channel.basic_consume(present[1], lambda *_: None)
        channel.basic_consume(present[1], lambda *_: None)
        consumer.process_data_events(0)
        depths = reader.depths(names)
        assert set(depths) == set(names)
        assert {q for q, d in depths.items() if d is None} == missing
        assert depths[present[0]] is not None and depths[present[0]].ready == 5
        assert depths[present[-1]] is not None and depths[present[-1]].ready == 3
        assert depths[present[len(present) // 2]] is not None and depths[present[len(present) // 2]].ready == 1
        assert depths[present[1]] is not None and depths[present[1]].consumers == 2
        assert sum(d.ready for d in depths.values() if d is not None) == 9
        again = reader.depths([present[0], names[0], present[0]])  # the same connection, channels reopened
        assert again[present[0]] is not None and again[present[0]].ready == 5 and again[names[0]] is None
    finally:
        reader.close()
        consumer.close()
        delete(amqp_url, *present)


def test_a_connection_closed_by_the_broker_is_replaced_once(amqp_url: str, rabbitmq: Any, queue_name: str) -> None:
    fill(amqp_url, declare=[queue_name], messages={queue_name: 2})
    observer = BrokerObserver(amqp_url, rabbitmq.management_url)
    base = httpx.URL(rabbitmq.management_url)
    auth = (base.username, base.password)
    try:
        first = observer.ready_counts([queue_name])[queue_name]
        assert first is not None and first.ready == 2

        def ours() -> list[str] | None:
            rows = httpx.get(f"{str(base.copy_with(username=None, password=None)).rstrip('/')}/api/connections", auth=auth).json()
            names = [r["name"] for r in rows if (r.get("client_properties") or {}).get("connection_name") == "taskq-operator"]
            return names or None

        for name in poll(ours, timeout=15, what="the operator's connection in the management API", interval=0.2):
            url = f"{str(base.copy_with(username=None, password=None)).rstrip('/')}/api/connections/{quote(name, safe='')}"
            httpx.delete(url, auth=auth).raise_for_status()
        time.sleep(0.5)  # the broker closes it
        second = observer.ready_counts([queue_name])[queue_name]
        assert second is not None and second.ready == 2
    finally:
        observer.close()
        delete(amqp_url, queue_name)


def test_refused_credentials_and_a_dead_port_are_taskq_errors_without_the_password(amqp_url: str) -> None:
    wrong = (
        amqp_url.replace("://", "://nobody:hunter2@", 1)
        if "@" not in amqp_url
        else ("amqp://nobody:hunter2@" + amqp_url.split("@", 1)[1])
    )
    for url in (wrong, "amqp://nobody:hunter2@127.0.0.1:1/%2F", "amqp://nobody:hunter2@[bad"):
        reader = DepthReader(url, timeout_s=5)
        with pytest.raises(BrokerUnavailable) as error:
            reader.depths(["q"])
        assert "hunter2" not in str(error.value)
        assert not reader.connected
