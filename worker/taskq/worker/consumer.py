"""The connection thread: consume with manual acks, dispatch to the executor, ack recorded outcomes.

`Consumer.run` owns the pika `BlockingConnection` (called on the main thread by `taskq.worker.main`).
It keeps calling `process_data_events` so heartbeats flow while tasks run in executor threads. Other
threads never touch the channel: the committer hands finished deliveries over with
`add_callback_threadsafe`, and the acks (one multiple-ack per batch where tags allow) are sent here.

Broker lost: reconnect with backoff. Deliveries of the lost channel are void: queued jobs of it are
dropped (the broker redelivers them), and acks for them are never sent on the new channel.
SIGTERM (`request_stop`): cancel the consumer, requeue what has not started, let running tasks
finish within the grace period, flush, ack, and close.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import pika
import pika.exceptions as pe

from taskq.broker.connection import connect, translated
from taskq.broker.topology import declare_queue_topology
from taskq.core.message import MalformedMessage, TaskMessage, decode, utcnow
from taskq.errors import BrokerRejected, BrokerUnavailable, UnknownTask, redact_url
from taskq.registry import lookup
from taskq.settings import Settings
from taskq.worker.acks import AckTracker
from taskq.worker.committer import Committer, Done
from taskq.worker.decisions import DeadLetter, Requeue, Retry, malformed_decision, unknown_task_decision
from taskq.worker.executor import Executor, Job
from taskq.worker.logs import JsonLog
from taskq.worker.republish import Republisher

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 5.0
LOOP_SLICE_S = 0.1
_BROKER_ERRORS = (BrokerUnavailable, pe.AMQPError, ConnectionError, OSError)


@dataclass(eq=False)
class Delivery:
    """One message as delivered on one channel (`generation` names the channel)."""

    tag: int
    generation: int
    body: bytes
    properties: pika.BasicProperties
    redelivered: bool
    message: TaskMessage | None = None
    received_at: float = field(default_factory=time.monotonic)


class Consumer:
    """Consumes one work queue; see the module docstring for the threads and the shutdown."""

    def __init__(self, settings: Settings, executor: Executor, committer_ref: Callable[[], Committer], log: JsonLog) -> None:
        self._settings = settings
        self._executor = executor
        self._committer_ref = committer_ref
        self._log = log
        self._where = redact_url(settings.amqp_url)
        self._connection: pika.BlockingConnection | None = None
        self._channel: pika.adapters.blocking_connection.BlockingChannel | None = None
        self._republisher: Republisher | None = None
        self._consumer_tag: str | None = None
        self._tracker = AckTracker()
        self._stop = threading.Event()
        self.generation = 0
        self.connected = False
        self.draining = False
        self.loop_at = time.monotonic()
        self.acked = 0

    # -- status for health and heartbeats (read from other threads) ---------------------------------

    @property
    def inflight(self) -> int:
        return self._tracker.unacked

    def request_stop(self) -> None:
        self._stop.set()

    # -- entry point ------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `request_stop`, reconnecting on broker loss; then drain."""
        backoff = RECONNECT_INITIAL_S
        while not self._stop.is_set():
            try:
                self._open()
                backoff = RECONNECT_INITIAL_S
                while not self._stop.is_set():
                    assert self._connection is not None
                    self._connection.process_data_events(time_limit=LOOP_SLICE_S)
                    self.loop_at = time.monotonic()
            except _BROKER_ERRORS as exc:
                self._lost(exc)
                self._stop.wait(backoff * (0.5 + random.random() / 2))
                backoff = min(RECONNECT_MAX_S, backoff * 2)
                self.loop_at = time.monotonic()
        self._drain()

    def _open(self) -> None:
        settings = self._settings
        connection = connect(settings.amqp_url, name=f"taskq-worker {settings.worker_id}")
        try:
            declare_queue_topology(connection, settings.queue, max_priority=settings.max_priority, task_timeout_s=settings.task_timeout)
            with translated("opening the consumer channel", self._where):
                channel = connection.channel()
                channel.basic_qos(prefetch_count=settings.prefetch)
                republisher = Republisher(connection, settings.queue)
                self.generation += 1
                self._tracker.reset()
                self._connection, self._channel, self._republisher = connection, channel, republisher
                self._consumer_tag = channel.basic_consume(settings.queue, self._on_message, auto_ack=False)
        except BaseException:
            _close_quietly(connection)
            raise
        self.connected = True
        self._log.event("broker.connected", broker=self._where, queue=settings.queue, prefetch=settings.prefetch)

    def _lost(self, exc: BaseException) -> None:
        was_connected = self.connected
        self.connected = False
        self.generation += 1  # acks for the old channel are void from now on
        self._tracker.reset()
        current = self.generation
        dropped = self._executor.discard_queued(lambda job: _delivery(job).generation != current)
        if self._connection is not None:
            _close_quietly(self._connection)
        self._connection = self._channel = self._republisher = None
        level = "warning" if was_connected else "info"
        self._log.event("broker.lost", level, broker=self._where, error=f"{type(exc).__name__}: {exc}"[:300], dropped_queued=len(dropped))

    # -- deliveries (connection thread) -----------------------------------------------------------

    def _on_message(self, channel: object, method: pika.spec.Basic.Deliver, properties: pika.BasicProperties, body: bytes) -> None:
        delivery = Delivery(method.delivery_tag, self.generation, body, properties, bool(method.redelivered))
        self._tracker.delivered(delivery.tag)
        committer = self._committer_ref()
        try:
            message = decode(body)
        except MalformedMessage as exc:
            committer.decided(delivery, malformed_decision(body, exc.reason, utcnow()))
            return
        try:
            lookup(message.name)
        except UnknownTask as exc:
            committer.decided(delivery, unknown_task_decision(message, body, str(exc), utcnow()))
            return
        delivery.message = message
        if delivery.redelivered:
            committer.precheck(delivery, message)
        else:
            self.admit(delivery, message)

    def admit(self, token: Hashable, message: TaskMessage) -> None:
        """Hand a delivery to the executor (called here, or by the committer after a redelivery check)."""
        assert isinstance(token, Delivery)
        if token.generation != self.generation:
            return  # its channel is gone; the broker redelivers it
        if self.draining:
            self.complete([Done(token, Requeue(), None)])
            return
        spec = lookup(message.name)
        timeout = message.timeout if spec.timeout is None else min(message.timeout, spec.timeout)
        self._executor.submit(Job(message, spec.function, timeout, token))

    def complete(self, done: list[Done]) -> None:
        """Schedule the acks/publishes of recorded deliveries on the connection thread (any thread)."""
        connection = self._connection
        if connection is None:
            return  # disconnected: the broker redelivers, and the recorded outcomes make that idempotent
        try:
            connection.add_callback_threadsafe(lambda: self._perform(done))
        except (pe.ConnectionWrongStateError, pe.AMQPError):
            return

    def _perform(self, done: list[Done]) -> None:
        channel, republisher = self._channel, self._republisher
        if channel is None or republisher is None:
            return
        settled: list[int] = []
        for item in done:
            delivery = item.token
            assert isinstance(delivery, Delivery)
            if delivery.generation != self.generation or not self._tracker.is_pending(delivery.tag):
                continue
            action = item.action
            try:
                if isinstance(action, Retry):
                    with translated("publishing a retry", self._where):
                        republisher.retry(action)
                elif isinstance(action, DeadLetter):
                    with translated("publishing a dead letter", self._where):
                        republisher.dead_letter(action, delivery.properties)
            except BrokerRejected as exc:
                self._log.event("broker.republish_refused", "error", error=str(exc), task_id=delivery.message.id if delivery.message else None)
                action = Requeue()
            if isinstance(action, Requeue):
                if self._tracker.forget(delivery.tag):
                    channel.basic_nack(delivery.tag, requeue=True)
                continue
            settled.append(delivery.tag)
        top, singles = self._tracker.settle(settled)
        if top is not None:
            channel.basic_ack(top, multiple=True)
        for tag in singles:
            channel.basic_ack(tag)
        self.acked += len(settled)
        if self._log.enabled("debug"):
            self._log.event("acks.sent", "debug", settled=len(settled), multiple_up_to=top, singles=len(singles), of=len(done))

    # -- shutdown ---------------------------------------------------------------------------------

    def _drain(self) -> None:
        self.draining = True
        grace = self._settings.grace_seconds
        deadline = time.monotonic() + grace
        connection, channel = self._connection, self._channel
        requeued = 0
        try:
            if channel is not None and self._consumer_tag is not None:
                channel.basic_cancel(self._consumer_tag)
            for job in self._executor.drain_queued():
                delivery = _delivery(job)
                if channel is not None and delivery.generation == self.generation and self._tracker.forget(delivery.tag):
                    channel.basic_nack(delivery.tag, requeue=True)
                    requeued += 1
            self._log.event("worker.draining", running=self._executor.running_count(), requeued=requeued, grace_s=grace)
            committer = self._committer_ref()
            while time.monotonic() < deadline and (self._executor.running_count() or committer.pending_count()):
                if connection is not None:
                    connection.process_data_events(time_limit=0.05)
                else:
                    time.sleep(0.05)
            flushed = committer.stop(max(1.0, deadline - time.monotonic()))
            if connection is not None:
                connection.process_data_events(time_limit=0.05)  # send the acks of the last flush
            if not flushed:
                self._log.event("worker.unflushed", "error", pending=committer.pending_count())
        except _BROKER_ERRORS as exc:
            self._log.event("broker.lost", "warning", broker=self._where, error=f"{type(exc).__name__}", during="drain")
            self._committer_ref().stop(max(1.0, deadline - time.monotonic()))
        finally:
            left = self._executor.running_count()
            if left:
                self._log.event("worker.grace_expired", "warning", running=left)
            if connection is not None:
                _close_quietly(connection)
            self.connected = False


def _delivery(job: Job) -> Delivery:
    token = job.token
    assert isinstance(token, Delivery)
    return token


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways; it is gone either way
        pass

