"""The connection stage: consume with manual acks, hand deliveries on, perform recorded actions.

`Consumer.run` owns the pika `BlockingConnection` (on the main thread of `taskq-worker`). It keeps
calling `process_data_events`, so heartbeats flow while tasks run in the pool. Each delivery becomes a
`Delivery` and goes one of three ways: a fresh task to the pool (`Pool.submit`), a redelivered one to
the committer to be counted and checked first (`Redelivered`), a body that is not a runnable task to
the committer with its decision (`Decided`: dead-lettered with a reason). Nothing a message holds
can raise out of this stage: intake errors of any kind become a dead letter.

Other threads never touch the channel: the committer hands finished deliveries back through `send`
(pika's `add_callback_threadsafe`), and the acks (one multiple-ack per batch where tags allow), retry
publishes and dead letters are sent here.

Broker lost: reconnect with backoff. Deliveries of the lost channel are void: queued attempts of it
are dropped from the pool (the broker redelivers them), and their acks are never sent on the new one.
Cancels (`taskq.core.cancel`): the consumer also consumes the queue's control exchange. A notice
drops that attempt from the pool's not-started queue (acked, never run), makes the pool stop it if it
runs (process pool: the child is killed) and is remembered for an hour, so a delivery of that attempt
arriving later is acked at intake without a store read. Deliveries of a later attempt (retries, out
of a delay queue) are checked against the store before they run, as redeliveries are: a cancel of a
`retrying` task claims the attempt that waits there. Fresh first deliveries cost no store read.

SIGTERM (`request_stop`): cancel the consumer, requeue what has not started, let running attempts
finish within the grace period, flush, ack, close. A failed stage (see `Supervisor`): stop at once,
ack nothing more, close; the broker redelivers everything unacked.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

import pika
import pika.exceptions as pe

from taskq.broker.connection import connect, translated
from taskq.broker.control import consume_notices
from taskq.broker.topology import declare_queue_topology
from taskq.core.cancel import RECENT_CANCEL_S, RECENT_CANCELS, CancelNotice
from taskq.core.intake import broker_delivery_count, read_message
from taskq.core.limits import attempt_limits, lease_s, queue_consumer_timeout_ms
from taskq.core.message import MalformedMessage, utcnow
from taskq.core.outcomes import Ack, DeadLetter, Decision, Requeue, Retry, malformed_outcome, unknown_task_outcome
from taskq.core.storable import safe_text
from taskq.core.topology import REPUBLISHED_HEADER
from taskq.errors import BrokerRejected, BrokerUnavailable, TaskqError, UnknownTask, redact_url
from taskq.registry import lookup
from taskq.settings import Settings
from taskq.worker.acks import AckTracker
from taskq.worker.committer import Committer, Decided, Done, Redelivered
from taskq.worker.delivery import Delivery
from taskq.worker.logs import JsonLog
from taskq.worker.pools import Attempt, Pool
from taskq.worker.republish import Republisher
from taskq.worker.supervisor import Supervisor

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 5.0
LOOP_SLICE_S = 0.1
CONSUMER_TIMEOUT_ARGUMENT = "x-consumer-timeout"
_BROKER_ERRORS = (BrokerUnavailable, pe.AMQPError, ConnectionError, OSError)


class Consumer:
    """Consumes one work queue; see the module docstring for the stages and the shutdown."""

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        supervisor: Supervisor,
        log: JsonLog,
        *,
        recent_cancels: Callable[[datetime], list[tuple[str, int]]] | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._supervisor = supervisor
        self._log = log
        self._committer: Committer | None = None
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
        self.prefetch = settings.effective_prefetch
        self.consumer_timeout_ms = queue_consumer_timeout_ms(settings.task_timeout)
        self.lease_s = lease_s(settings.task_timeout)
        self._returned: set[tuple[str, int]] = set()  # (task id, attempt) this worker handed back unstarted
        self._lease_checked_at = time.monotonic()
        self.returned = 0
        self._cancels: OrderedDict[tuple[str, int], float] = OrderedDict()  # (task id, attempt) -> monotonic
        self.cancels_received = 0
        self._recent_cancels = recent_cancels

    def attach(self, committer: Committer) -> None:
        """Link the committer stage (built after this one: it needs this stage as its ack sink)."""
        self._committer = committer

    # -- status for health and heartbeats (read from other threads) ---------------------------------

    @property
    def inflight(self) -> int:
        return self._tracker.unacked

    def request_stop(self) -> None:
        self._stop.set()

    # -- entry point ------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `request_stop` or a stage failure, reconnecting on broker loss; then drain."""
        backoff = RECONNECT_INITIAL_S
        try:
            while not self._should_end():
                try:
                    self._open()
                    backoff = RECONNECT_INITIAL_S
                    while not self._should_end():
                        assert self._connection is not None
                        self._connection.process_data_events(time_limit=LOOP_SLICE_S)
                        self.loop_at = time.monotonic()
                        self._check_pool()
                        self._return_expired_leases()
                except _BROKER_ERRORS as exc:
                    self._lost(exc)
                    self._stop.wait(backoff * (0.5 + random.random() / 2))
                    backoff = min(RECONNECT_MAX_S, backoff * 2)
                    self.loop_at = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - anything else escaping the connection stage fails the worker
            self._supervisor.fail("connection", exc)
        if self._supervisor.failed:
            self._abandon()
        else:
            self._drain()

    def _should_end(self) -> bool:
        return self._stop.is_set() or self._supervisor.failed

    def _check_pool(self) -> None:
        failure = self._pool.failure()
        if failure is not None and not self._supervisor.failed:
            self._supervisor.fail("pool", failure)

    def _return_expired_leases(self) -> None:
        """Hand back deliveries that waited too long for a slot, before the broker's timeout can hit them."""
        now = time.monotonic()
        if now - self._lease_checked_at < 1.0 or self._channel is None:
            return
        self._lease_checked_at = now
        current = self.generation
        expired = self._pool.take_queued(
            lambda attempt: _delivery(attempt).generation == current and now - _delivery(attempt).received_at > self.lease_s
        )
        for attempt in expired:
            delivery = _delivery(attempt)
            if self._tracker.forget(delivery.tag):
                self._channel.basic_nack(delivery.tag, requeue=True)
                self._returned.add((attempt.task_id, attempt.attempt))
        if expired:
            self.returned += len(expired)
            self._log.event("deliveries.lease_expired", "info", returned=len(expired), lease_s=round(self.lease_s, 1))

    def _open(self) -> None:
        settings = self._settings
        connection = connect(settings.amqp_url, name=f"taskq-worker {settings.worker_id}")
        try:
            declare_queue_topology(
                connection,
                settings.queue,
                max_priority=settings.max_priority,
                task_timeout_s=settings.task_timeout,
                queue_type=settings.queue_type,
                max_deliveries=settings.max_deliveries,
            )
            with translated("opening the consumer channel", self._where):
                channel = connection.channel()
                channel.basic_qos(prefetch_count=self.prefetch)
                republisher = Republisher(connection, settings.queue, settings.queue_type)
                self.generation += 1
                self._tracker.reset()
                self._connection, self._channel, self._republisher = connection, channel, republisher
                # Also asked per consumer, for brokers that read it there; RabbitMQ 4.0 reads only the
                # queue's argument (declared with the same value) and the lease keeps waits inside it.
                self._consumer_tag = channel.basic_consume(
                    settings.queue,
                    self._on_message,
                    auto_ack=False,
                    arguments={CONSUMER_TIMEOUT_ARGUMENT: self.consumer_timeout_ms},
                )
                consume_notices(channel, settings.queue, self._on_cancel)
            self._load_cancels()
        except BaseException:
            _close_quietly(connection)
            raise
        self.connected = True
        self._log.event(
            "broker.connected",
            broker=self._where,
            queue=settings.queue,
            prefetch=self.prefetch,
            consumer_timeout_ms=self.consumer_timeout_ms,
        )

    def _lost(self, exc: BaseException) -> None:
        was_connected = self.connected
        self.connected = False
        self.generation += 1  # acks for the old channel are void from now on
        self._tracker.reset()
        current = self.generation
        dropped = self._pool.take_queued(lambda attempt: _delivery(attempt).generation != current)
        if self._connection is not None:
            _close_quietly(self._connection)
        self._connection = self._channel = self._republisher = None
        level = "warning" if was_connected else "info"
        error = safe_text(f"{type(exc).__name__}: {exc}", 300)
        self._log.event("broker.lost", level, broker=self._where, error=error, dropped_queued=len(dropped))

    # -- cancels (connection thread) --------------------------------------------------------------

    def _on_cancel(self, notice: CancelNotice) -> None:
        """A cancel notice: skip that attempt's deliveries, drop it if prefetched, stop it if it runs."""
        now = time.monotonic()
        key = (notice.task_id, notice.attempt)
        self._cancels[key] = now
        self._cancels.move_to_end(key)
        while self._cancels and (
            len(self._cancels) > RECENT_CANCELS or now - next(iter(self._cancels.values())) > RECENT_CANCEL_S
        ):
            self._cancels.popitem(last=False)
        self.cancels_received += 1
        current = self.generation
        dropped = self._pool.take_queued(
            lambda a: a.task_id == notice.task_id and a.attempt == notice.attempt and _delivery(a).generation == current
        )
        if dropped:
            self._perform([Done(_delivery(a), Ack(), None) for a in dropped])
        stopped = self._pool.cancel(notice.task_id, notice.attempt)
        self._log.event(
            "task.cancel_received", task_id=notice.task_id, attempt=notice.attempt, dropped=len(dropped), stopped=stopped
        )

    def _load_cancels(self) -> None:
        """Remember the cancels made while this worker was not listening (its notices went elsewhere)."""
        if self._recent_cancels is None:
            return
        try:
            pairs = self._recent_cancels(utcnow() - timedelta(seconds=RECENT_CANCEL_S))
        except TaskqError as exc:
            self._log.event("store.unavailable", "warning", error=str(exc), during="reading cancels")
            return
        now = time.monotonic()
        for pair in pairs[-RECENT_CANCELS:]:
            self._cancels[pair] = now

    def _cancelled(self, task_id: str, attempt: int) -> bool:
        seen = self._cancels.get((task_id, attempt))
        return seen is not None and time.monotonic() - seen <= RECENT_CANCEL_S

    # -- deliveries (connection thread) -----------------------------------------------------------

    def _on_message(
        self, channel: object, method: pika.spec.Basic.Deliver, properties: pika.BasicProperties, body: bytes
    ) -> None:
        delivery = Delivery(method.delivery_tag, self.generation, body, properties, bool(method.redelivered))
        self._tracker.delivered(delivery.tag)
        committer = self._committer
        assert committer is not None
        try:
            item = self._intake(delivery)
        except Exception as exc:  # noqa: BLE001 - a message must never be able to stop this stage
            reason = safe_text(f"intake failed: {type(exc).__name__}: {exc}", 300)
            item = Decided(delivery, malformed_outcome(_bytes(body), reason, utcnow()))
        if item is None:
            self.admit(delivery)
        else:
            committer.inbox.put(item)

    def _intake(self, delivery: Delivery) -> Decided | Redelivered | None:
        """Read a delivery: a decision to record, a redelivery to check, or None (run it)."""
        body = delivery.body
        try:
            message = read_message(body)
            delivery.broker_deliveries = broker_delivery_count(delivery.properties.headers)
        except MalformedMessage as exc:
            return Decided(delivery, malformed_outcome(_bytes(body), exc.reason, utcnow()))
        try:
            spec = lookup(message.name)
        except UnknownTask as exc:
            return Decided(delivery, unknown_task_outcome(message, _bytes(body), str(exc), utcnow()))
        delivery.message = message
        delivery.limits = attempt_limits(
            message_timeout=message.timeout,
            message_retries=message.max_retries,
            task_timeout=spec.timeout,
            task_retries=spec.max_retries,
            worker_timeout=self._settings.task_timeout,
            worker_retries=self._settings.max_retries,
        )
        if self._cancelled(message.id, message.attempt):
            fields = {"task_id": message.id, "name": message.name, "attempt": message.attempt}
            return Decided(delivery, Decision(None, Ack(), "task.cancelled_skipped", fields))
        if delivery.redelivered or (delivery.broker_deliveries or 0) > 0:
            # A delivery this worker handed back unstarted (lease) is not a failed delivery: don't count it.
            handed_back = (message.id, message.attempt) in self._returned
            self._returned.discard((message.id, message.attempt))
            return Redelivered(delivery, count=not handed_back)
        if (delivery.properties.headers or {}).get(REPUBLISHED_HEADER):
            return Redelivered(delivery, count=False)  # a copy: its first may have run already
        if message.attempt > 1 or "x-death" in (delivery.properties.headers or {}):
            # Out of a delay queue (a retry, a delayed task): it may have been cancelled while it waited.
            return Redelivered(delivery, count=False)
        return None

    def admit(self, delivery: Delivery) -> None:
        """Hand a delivery to the pool (from here, or from the committer after a redelivery check; any thread)."""
        if delivery.generation != self.generation:
            return  # its channel is gone; the broker redelivers it
        if self.draining:
            self.send([Done(delivery, Requeue(), None)])
            return
        message, limits = delivery.message, delivery.limits
        assert message is not None and limits is not None
        self._pool.submit(
            Attempt(
                key=delivery,
                task_id=message.id,
                name=message.name,
                attempt=message.attempt,
                queue=message.queue,
                args=list(message.args),
                kwargs=dict(message.kwargs),
                timeout_s=limits.timeout_s,
                precheck=functools.partial(self._still_open, delivery) if delivery.checked_at is not None else None,
            )
        )

    def _still_open(self, delivery: Delivery) -> bool:
        """The pool's last look before a checked redelivery starts (a pool thread): ack it instead if its task
        became final while it waited."""
        committer = self._committer
        if committer is None or committer.still_open(delivery):
            return True
        message = delivery.message
        self._log.event("task.redelivered_final", "info", task_id=message.id if message else None, at="start")
        self.send([Done(delivery, Ack(), None)])
        return False

    def send(self, done: list[Done]) -> None:
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
        if channel is None or republisher is None or self._supervisor.failed:
            return
        settled: list[int] = []
        for item in done:
            delivery = item.delivery
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
                # Returned to the queue: it comes back as a counted delivery, so a publish the broker
                # keeps refusing (permissions, a missing queue) ends at the delivery limit, not in a loop.
                task_id = delivery.message.id if delivery.message else None
                self._log.event("broker.republish_refused", "error", error=str(exc), task_id=task_id)
                action = Requeue()
                # A refusal closes the publishing channel: open a fresh one for the next publishes.
                assert self._connection is not None
                with translated("reopening the publishing channel", self._where):
                    republisher = self._republisher = Republisher(
                        self._connection, self._settings.queue, self._settings.queue_type
                    )
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

    # -- shutdown ---------------------------------------------------------------------------------

    def _drain(self) -> None:
        self.draining = True
        grace = self._settings.grace_seconds
        deadline = time.monotonic() + grace
        connection, channel = self._connection, self._channel
        committer = self._committer
        assert committer is not None
        requeued = 0
        try:
            if channel is not None and self._consumer_tag is not None:
                channel.basic_cancel(self._consumer_tag)
            for attempt in self._pool.take_queued():
                delivery = _delivery(attempt)
                if channel is not None and delivery.generation == self.generation and self._tracker.forget(delivery.tag):
                    channel.basic_nack(delivery.tag, requeue=True)
                    requeued += 1
            self._log.event("worker.draining", running=self._pool.running(), requeued=requeued, grace_s=grace)
            while (
                time.monotonic() < deadline
                and (self._pool.running() or committer.pending_count())
                and not self._supervisor.failed
            ):
                if connection is not None:
                    connection.process_data_events(time_limit=0.05)
                else:
                    time.sleep(0.05)
            flushed = committer.stop(max(1.0, deadline - time.monotonic()))
            if connection is not None:
                connection.process_data_events(time_limit=0.1)  # send the acks of the last flush
            if not flushed:
                self._log.event("worker.unflushed", "error", pending=committer.pending_count())
        except _BROKER_ERRORS as exc:
            self._log.event("broker.lost", "warning", broker=self._where, error=type(exc).__name__, during="drain")
            committer.stop(max(1.0, deadline - time.monotonic()))
        finally:
            left = self._pool.running()
            if left:
                self._log.event("worker.grace_expired", "warning", running=left)
            if connection is not None:
                _close_quietly(connection)
            self.connected = False

    def _abandon(self) -> None:
        """A stage failed: ack nothing more and close; every unacked delivery is redelivered elsewhere."""
        self.draining = True
        if self._connection is not None:
            _close_quietly(self._connection)
        self._connection = self._channel = self._republisher = None
        self.connected = False


def _delivery(attempt: Attempt) -> Delivery:
    key = attempt.key
    assert isinstance(key, Delivery)
    return key


def _bytes(body: object) -> bytes:
    return bytes(body) if isinstance(body, (bytes, bytearray)) else repr(body).encode("utf-8", "replace")


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways; it is gone either way
        pass
