"""The fault proxy against the real servers: cut, delay and blackhole a broker and a store connection."""

from __future__ import annotations

import time

import pika
import pymongo
import pymongo.errors
import pytest

from taskq.broker.connection import connect
from taskq.errors import BrokerUnavailable
from taskq_dev import ports
from taskq_dev.faultproxy import Proxy

pytestmark = [pytest.mark.services]


def _ping_seconds(uri: str, timeout_ms: int = 2000) -> float:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        started = time.monotonic()
        client.admin.command("ping")
        return time.monotonic() - started
    finally:
        client.close()


def test_cut_closes_an_open_broker_connection_and_refuses_new_ones(broker_proxy: Proxy, proxied_amqp_url: str) -> None:
    connection = connect(proxied_amqp_url, name="faultproxy-test")
    try:
        channel = connection.channel()
        channel.queue_declare("", exclusive=True)
        broker_proxy.cut()
        assert not broker_proxy.enabled()
        with pytest.raises(pika.exceptions.AMQPError):
            for _ in range(50):  # bounded: the closed socket shows on the next I/O
                connection.process_data_events(time_limit=0.1)
                channel.queue_declare("", exclusive=True)
        assert not ports.port_accepts(broker_proxy.listen_port)
        with pytest.raises(BrokerUnavailable):
            connect(proxied_amqp_url, name="faultproxy-test")
    finally:
        if connection.is_open:
            connection.close()
    broker_proxy.restore()
    connect(proxied_amqp_url, name="faultproxy-test").close()


def test_delay_adds_latency_to_store_round_trips(store_proxy: Proxy, proxied_mongodb_uri: str) -> None:
    plain = _ping_seconds(proxied_mongodb_uri)
    store_proxy.delay(300)
    assert set(store_proxy.toxics()) == {"latency_upstream", "latency_downstream"}
    delayed = _ping_seconds(proxied_mongodb_uri, timeout_ms=10_000)
    assert delayed >= plain + 0.5  # connect handshake and ping each cross both directions
    store_proxy.clear()
    assert _ping_seconds(proxied_mongodb_uri) < delayed


def test_blackhole_times_out_store_requests_until_cleared(store_proxy: Proxy, proxied_mongodb_uri: str) -> None:
    store_proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(pymongo.errors.PyMongoError):
        _ping_seconds(proxied_mongodb_uri, timeout_ms=1500)
    assert time.monotonic() - started >= 1.0  # it hung until the client's timeout: not refused
    assert ports.port_accepts(store_proxy.listen_port)  # the listener stays up: a blackhole, not a cut
    store_proxy.clear()
    assert _ping_seconds(proxied_mongodb_uri) < 2.0
