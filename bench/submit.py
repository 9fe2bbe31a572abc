"""Submit-rate measurements for the worker benchmark (`make bench-worker` imports these two functions).

`measure_submit_many`: tasks/s of `taskq.Client.submit_many` (store insert + publish with pipelined
confirms). `measure_raw_pika`: the floor it is compared with, a bare pika `SelectConnection`
publisher keeping the same window of unconfirmed messages, same durability (durable queue,
persistent messages, publisher confirms), no store. `measure_store_submit`: the store's side alone,
a bare pymongo loop doing the writes `submit_many` makes per task (an outbox entry and a `queued`
document, each by `insert_many` of one batch, then the outbox entries deleted by `_id $in` in the
client's chunks) with no broker. Run alone: `python bench/submit.py`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.frame import Method

from taskq.broker.connection import connect
from taskq.broker.publisher import DEFAULT_WINDOW
from taskq.broker.topology import declare_queue_topology
from taskq.client import DEFAULT_BATCH, MARK_CHUNK, Client
from taskq.core.document import outbox_entry, queued_document
from taskq.core.message import TaskMessage, new_task_id
from taskq.settings import Settings

RAW_TIMEOUT_S = 300.0


def _purge(amqp_url: str, queue: str) -> None:
    """Declare `queue` as taskq declares a work queue (same arguments), and empty it."""
    connection = connect(amqp_url, name="taskq-bench-purge")
    try:
        defaults = Settings()
        declare_queue_topology(
            connection,
            queue,
            max_priority=defaults.max_priority,
            task_timeout_s=defaults.task_timeout,
            queue_type=defaults.queue_type,
        )
        connection.channel().queue_purge(queue)
    finally:
        connection.close()


def measure_submit_many(
    amqp_url: str, mongodb_uri: str, database: str, queue: str, n: int, index_writes: Callable[[str], object] | None = None
) -> float:
    """Tasks/s of `submit_many` for `n` no-op tasks (queue and its documents purged before and after).

    `index_writes` (FerretDB's write index, as the worker runs get) is applied once the collections exist.
    """
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    with Client(settings) as client:
        client.submit_many([{"name": "noop"}])  # declares the queue, opens the connections, makes the collections
        if index_writes is not None:
            index_writes(database)
        client.purge(queue)
        tasks = ({"name": "noop", "args": [i]} for i in range(n))
        started = time.perf_counter()
        receipt = client.submit_many(tasks)
        seconds = time.perf_counter() - started
        client.purge(queue)
    if receipt.published != n:
        raise RuntimeError(f"submit_many published {receipt.published} of {n}")
    return n / seconds


def measure_store_submit(
    mongodb_uri: str,
    n: int,
    index_writes: Callable[[str], object] | None = None,
    batch: int = DEFAULT_BATCH,
    mark_chunk: int = MARK_CHUNK,
) -> dict[str, Any]:
    """Tasks/s of the store writes of `submit_many` alone, from a bare pymongo loop (no broker, no taskq code in the I/O).

    Per batch of `batch` tasks: `insert_many` of their outbox entries, then of their `queued`
    documents; every `mark_chunk` tasks (the client's `MARK_CHUNK`) one `delete_many({_id: {$in: ...}})` of the outbox entries,
    as the client marks confirmed publishes. Documents are built by taskq's pure core, so they are the
    client's. Also the seconds each kind of write took.
    """
    from pymongo import MongoClient

    database = f"bench_store_submit_{uuid.uuid4().hex[:6]}"
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, tz_aware=True, retryWrites=False)
    db = client[database]
    now = datetime.now(UTC)
    messages = [
        TaskMessage(id=new_task_id(), name="noop", args=[i], queue="bench-store-submit", created_at=now) for i in range(n)
    ]
    db.outbox.insert_one({"_id": "x"})
    db.tasks.insert_one({"_id": "x"})
    index_writes is not None and index_writes(database)
    seconds = {"insert outbox": 0.0, "insert tasks": 0.0, "delete outbox $in": 0.0}
    unmarked: list[str] = []
    try:
        started = time.perf_counter()
        for first in range(0, n, batch):
            chunk = messages[first : first + batch]
            t0 = time.perf_counter()
            db.outbox.insert_many([outbox_entry(m, now) for m in chunk], ordered=False)
            t1 = time.perf_counter()
            db.tasks.insert_many([queued_document(m, now) for m in chunk], ordered=False)
            t2 = time.perf_counter()
            seconds["insert outbox"] += t1 - t0
            seconds["insert tasks"] += t2 - t1
            unmarked.extend(m.id for m in chunk)
            if len(unmarked) >= mark_chunk or first + batch >= n:
                db.outbox.delete_many({"_id": {"$in": unmarked}})
                seconds["delete outbox $in"] += time.perf_counter() - t2
                unmarked = []
        elapsed = time.perf_counter() - started
    finally:
        client.drop_database(database)
        client.close()
    return {
        "tps": round(n / elapsed, 1),
        "tasks": n,
        "batch": batch,
        "mark_chunk": mark_chunk,
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
    }


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
        timer = threading.Timer(
            RAW_TIMEOUT_S, lambda: self.connection.ioloop.add_callback_threadsafe(self.connection.ioloop.stop)
        )
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


def measure_raw_confirm_ms(amqp_url: str, queue: str, samples: int = 100) -> dict[str, float]:
    """Idle round trip of one persistent publish and its confirm (bare pika, blocking), on a queue declared as taskq's.

    The broker's share of the idle latency: taskq's producer returns only after this confirm.
    """
    _purge(amqp_url, queue)
    connection = connect(amqp_url, name="taskq-bench-confirm")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        times: list[float] = []
        for index in range(samples):
            started = time.perf_counter()
            channel.basic_publish("", queue, json.dumps({"name": "noop", "args": [index]}).encode(), properties, mandatory=True)
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
    finally:
        connection.close()
        _purge(amqp_url, queue)
    times.sort()
    return {"p50": round(times[len(times) // 2], 2), "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2)}


def main() -> None:
    amqp_url = os.environ.get("TASKQ_AMQP_URL") or os.environ["AMQP_URL"]
    mongodb_uri = os.environ.get("TASKQ_MONGODB_URI") or os.environ["MONGODB_URI"]
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    raw = measure_raw_pika(amqp_url, "bench-submit-raw", n)
    ours = measure_submit_many(amqp_url, mongodb_uri, "taskq_bench_submit", "bench-submit", n)
    print(json.dumps({"n": n, "raw_submit_tps": round(raw), "submit_tps": round(ours), "ratio": round(ours / raw, 3)}))


if __name__ == "__main__":
    main()
