"""Submit-rate measurements for the worker benchmark (`make bench-worker` imports these two functions).

`measure_submit_many`: tasks/s of `taskq.Client.submit_many` (store insert + publish with pipelined
confirms). `measure_raw_pika`: the floor it is compared with, a bare pika `SelectConnection`
publisher keeping the same window of unconfirmed messages, same durability (durable queue,
persistent messages, publisher confirms), no store. Run alone: `python bench/submit.py`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.frame import Method

from taskq.broker.connection import connect
from taskq.broker.publisher import DEFAULT_WINDOW
from taskq.broker.topology import declare_queue_topology
from taskq.client import Client
from taskq.settings import Settings

RAW_TIMEOUT_S = 300.0


def _purge(amqp_url: str, queue: str) -> None:
    """Declare `queue` as taskq declares a work queue (same arguments), and empty it."""
    connection = connect(amqp_url, name="taskq-bench-purge")
    try:
        defaults = Settings()
        declare_queue_topology(
            connection, queue, max_priority=defaults.max_priority, task_timeout_s=defaults.task_timeout, queue_type=defaults.queue_type
        )
        connection.channel().queue_purge(queue)
    finally:
        connection.close()


def measure_submit_many(amqp_url: str, mongodb_uri: str, database: str, queue: str, n: int) -> float:
    """Tasks/s of `submit_many` for `n` no-op tasks (queue and its documents purged before and after)."""
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    with Client(settings) as client:
        client.submit_many([{"name": "noop"}])  # declares the queue, opens the connections
        client.purge(queue)
        tasks = ({"name": "noop", "args": [i]} for i in range(n))
        started = time.perf_counter()
        receipt = client.submit_many(tasks)
        seconds = time.perf_counter() - started
        client.purge(queue)
    if receipt.published != n:
        raise RuntimeError(f"submit_many published {receipt.published} of {n}")
    return n / seconds


class _RawPublisher:
    """The bare pipelined-confirm publisher: publish while fewer than `window` are unconfirmed."""

    def __init__(self, amqp_url: str, queue: str, n: int, window: int) -> None:
        self.queue, self.n, self.window = queue, n, window
        self.body = json.dumps({"name": "noop", "args": [0], "kwargs": {}, "pad": "x" * 40}).encode()
        self.properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        self.sent = self.confirmed = 0
        self.started = self.finished = 0.0
        self.error: str | None = None
        self.connection = SelectConnection(
            pika.URLParameters(amqp_url),
            on_open_callback=lambda conn: conn.channel(on_open_callback=self._on_channel),
            on_open_error_callback=self._on_error,
            on_close_callback=lambda conn, reason: conn.ioloop.stop(),
        )

    def _on_error(self, connection: SelectConnection, error: BaseException | str) -> None:
        self.error = f"connection failed: {type(error).__name__}"
        connection.ioloop.stop()

    def _on_channel(self, channel: Channel) -> None:
        self.channel = channel
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: self._begin())

    def _begin(self) -> None:
        self.started = time.perf_counter()
        self._fill()

    def _fill(self) -> None:
        while self.sent < self.n and self.sent - self.confirmed < self.window:
            self.sent += 1
            self.channel.basic_publish("", self.queue, self.body, self.properties)

    def _on_confirm(self, frame: Method) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            self.error = "a publish was nacked"
        self.confirmed = method.delivery_tag if method.multiple else self.confirmed + 1
        if self.confirmed >= self.n:
            self.finished = time.perf_counter()
            self.connection.close()
        else:
            self._fill()

    def run(self) -> float:
        timer = threading.Timer(RAW_TIMEOUT_S, lambda: self.connection.ioloop.add_callback_threadsafe(self.connection.ioloop.stop))
        timer.start()
        try:
            self.connection.ioloop.start()
        finally:
            timer.cancel()
        if self.error or not self.finished:
            raise RuntimeError(self.error or f"raw publisher stopped after {self.confirmed} of {self.n} confirms")
        return self.n / (self.finished - self.started)


def measure_raw_pika(amqp_url: str, queue: str, n: int, window: int = DEFAULT_WINDOW) -> float:
    """Messages/s of bare pika with `window` confirms in flight (queue purged before and after)."""
    _purge(amqp_url, queue)
    try:
        return _RawPublisher(amqp_url, queue, n, window).run()
    finally:
        _purge(amqp_url, queue)


def main() -> None:
    amqp_url = os.environ.get("TASKQ_AMQP_URL") or os.environ["AMQP_URL"]
    mongodb_uri = os.environ.get("TASKQ_MONGODB_URI") or os.environ["MONGODB_URI"]
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    raw = measure_raw_pika(amqp_url, "bench-submit-raw", n)
    ours = measure_submit_many(amqp_url, mongodb_uri, "taskq_bench_submit", "bench-submit", n)
    print(json.dumps({"n": n, "raw_submit_tps": round(raw), "submit_tps": round(ours), "ratio": round(ours / raw, 3)}))


if __name__ == "__main__":
    main()
