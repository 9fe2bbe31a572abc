"""Fault-proxy fixtures: toxiproxy on loopback in front of the session's RabbitMQ and store.

`fault_proxy` is one `toxiproxy-server` per session (`taskq_dev.faultproxy`); `broker_proxy` and
`store_proxy` are per-test proxies in front of the session's servers (restored after each test),
with `proxied_amqp_url` / `proxied_mongodb_uri` to hand to the clients a test wants to cut
(`proxy.cut()`), delay (`proxy.delay(ms)`) or blackhole (`proxy.blackhole()`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq_dev.faultproxy import FaultProxy, Proxy, url_port, url_through


@pytest.fixture(scope="session")
def fault_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    server = FaultProxy(Path(tmp_path_factory.mktemp("toxiproxy"))).start()
    try:
        yield server
    finally:
        server.close()


def _proxy_for(fault_proxy: FaultProxy, kind: str, url: str) -> Iterator[Proxy]:
    proxy = fault_proxy.proxy(f"{kind}-{uuid.uuid4().hex[:8]}", url_port(url))
    try:
        yield proxy
    finally:
        proxy.restore()


@pytest.fixture
def broker_proxy(fault_proxy: FaultProxy, amqp_url: str) -> Iterator[Proxy]:
    yield from _proxy_for(fault_proxy, "broker", amqp_url)


@pytest.fixture
def store_proxy(fault_proxy: FaultProxy, mongodb_uri: str) -> Iterator[Proxy]:
    yield from _proxy_for(fault_proxy, "store", mongodb_uri)


@pytest.fixture
def proxied_amqp_url(broker_proxy: Proxy, amqp_url: str) -> str:
    return url_through(amqp_url, broker_proxy)


@pytest.fixture
def proxied_mongodb_uri(store_proxy: Proxy, mongodb_uri: str) -> str:
    return url_through(mongodb_uri, store_proxy)
