"""Opening a broker connection to a peer that accepts TCP and never speaks AMQP (a blackholed broker)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from taskq.broker.connection import HANDSHAKE_TIMEOUT_S, connect
from taskq.errors import BrokerUnavailable


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_a_broker_that_never_answers_the_handshake_is_unavailable_not_a_pika_error(silent_listener: int) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable") as caught:
        connect(f"amqp://user:secret@127.0.0.1:{silent_listener}/", name="blackhole-test")
    assert "secret" not in str(caught.value)
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT_S + 5
