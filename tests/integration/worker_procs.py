"""Helpers for the worker tests: `taskq-worker` as a real subprocess, broker reads and writes.

Used by `tests/integration/test_worker_*.py` (their fixtures are in `conftest.py` next to this file).
Every wait is bounded in time; a worker is always stopped (SIGKILL as a last resort) when its test ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika

from taskq.broker.connection import connect
from taskq.core.states import TaskState
from taskq.core.topology import dead_queue
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll


@dataclass
class Services:
    """The URLs and names one worker test uses."""

    amqp_url: str
    mongodb_uri: str
    database: str
    queue: str

    def env(self, **overrides: Any) -> dict[str, str]:
        env = {
            **os.environ,
            "TASKQ_AMQP_URL": self.amqp_url,
            "TASKQ_MONGODB_URI": self.mongodb_uri,
            "TASKQ_DATABASE": self.database,
            "TASKQ_QUEUE": self.queue,
            "TASKQ_TASK_MODULES": "taskq.examples",
            "TASKQ_HEALTH_PORT": "0",
            "TASKQ_RETRY_INITIAL": "0.2",
            "TASKQ_RETRY_MAX": "1",
            "TASKQ_GRACE_SECONDS": "10",
            # The test task modules next to this file (worker_test_tasks) import in workers and their children.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])),
        }
        env.update({f"TASKQ_{key.upper()}": str(value) for key, value in overrides.items()})
        return env


@dataclass
class WorkerProcess:
    """One `taskq-worker` subprocess whose JSON log goes to a file."""

    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    _log_file: Any = field(default=None, repr=False)

    def start(self) -> WorkerProcess:
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            ["taskq-worker", "--log-level", "info"],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def events(self) -> list[dict[str, Any]]:
        """Every JSON line this worker logged so far."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def wait_connected(self, timeout: float = 60.0) -> None:
        poll(lambda: self.events_named("broker.connected") or self._exited(), timeout=timeout, what="the worker to connect")
        assert self.alive(), f"worker exited early:\n{self.log_path.read_text()[-3000:]}"

    def health_port(self) -> int:
        started = poll(lambda: self.events_named("worker.started"), timeout=30, what="worker.started")
        return int(started[0]["health_port"])

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within `timeout`."""
        if self.process is None:
            return None
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.process.returncode


@contextmanager
def workers(services: Services, tmp_path: Path, count: int = 1, **overrides: Any) -> Iterator[list[WorkerProcess]]:
    """Start `count` workers (each with its own log) and stop them all afterwards."""
    started: list[WorkerProcess] = []
    try:
        for index in range(count):
            env = services.env(worker_id=f"w{index}-{os.getpid()}-{time.monotonic_ns() % 100000}", **overrides)
            started.append(WorkerProcess(tmp_path / f"worker-{len(list(tmp_path.glob('worker-*.log')))}.log", env).start())
        for worker in started:
            worker.wait_connected()
        yield started
    finally:
        for worker in started:
            worker.stop()


def count_in_state(store: TaskStore, state: TaskState) -> int:
    """How many tasks of the test's database are in `state`."""
    return store.counts_by_state().get(state.value, 0)


def queue_counts(management_base: str, auth: tuple[str, str], vhost: str, queue: str) -> dict[str, int]:
    """Ready and unacked counts of a queue from the management API (figures lag about a second)."""
    response = httpx.get(f"{management_base}/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}", auth=auth, timeout=5.0)
    response.raise_for_status()
    body = response.json()
    return {"ready": int(body.get("messages_ready", 0)), "unacked": int(body.get("messages_unacknowledged", 0))}


def drain_queue(amqp_url: str, queue: str, limit: int = 10_000) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take every message now in `queue` (acking them)."""
    connection = connect(amqp_url, name="worker-tests")
    try:
        channel = connection.channel()
        taken = []
        for _ in range(limit):
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            taken.append((properties, body))
        return taken
    finally:
        connection.close()


def dead_letters(services: Services, expected: int, timeout: float = 60) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take messages from the test queue's dead-letter queue until `expected` arrived (bounded)."""
    taken: list[tuple[pika.BasicProperties, bytes]] = []

    def collect() -> bool:
        taken.extend(drain_queue(services.amqp_url, dead_queue(services.queue)))
        return len(taken) >= expected

    poll(collect, timeout=timeout, interval=0.3, what=f"{expected} dead letters")
    return taken


def publish_raw(amqp_url: str, queue: str, bodies: list[bytes]) -> None:
    """Publish bodies as they are (for malformed-message tests), with confirms."""
    connection = connect(amqp_url, name="worker-tests")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def taskqueue_body(services: Services, namespace: str, name: str = "tq") -> dict[str, Any]:
    """A minimal TaskQueue object on the test's queue and database (for the operator's sweeps)."""
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": "u", "resourceVersion": "1"},
        "spec": {
            "queue": services.queue,
            "broker": {"secretRef": {"name": "b"}},
            "store": {"secretRef": {"name": "s"}, "database": services.database},
            "worker": {"image": "w"},
        },
    }
