"""Publishing task messages with publisher confirms, many of them in flight at once.

pika's `BlockingConnection` waits for each confirm before the next publish (about 1.2k msg/s on
this machine), so this publisher runs a `SelectConnection` in its own I/O thread and keeps a bounded
window of unconfirmed messages. Callers (the `taskq.Client`, the HTTP service through it) open a
`PublishStream`, `add` messages to it as they become ready and `wait` for all their confirms; several
threads may stream at once. Used by `taskq.client`; errors are `taskq.errors`.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pika.exceptions as pe
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.frame import Method
from pika.spec import Basic, BasicProperties

from taskq.broker.connection import parameters
from taskq.core.topology import REPUBLISHED_HEADER
from taskq.errors import BrokerRejected, BrokerUnavailable, redact_url

DEFAULT_WINDOW = 1000
CONNECT_TIMEOUT_S = 15.0
STALL_TIMEOUT_S = 30.0
BURST = 128
PERSISTENT = 2


class _CoalescingConnection(SelectConnection):  # type: ignore[misc]  # pika ships no type hints
    """A `SelectConnection` that can send the frames of a burst of publishes in one socket write.

    Stock pika writes each frame (method, header, body: three per message) with its own `send`,
    which costs more CPU than the publish itself. Inside `coalesced()` the marshaled frames are held
    and written once when the burst ends; outside it pika behaves as usual. (Overrides pika's
    `_output_marshaled_frames`, present throughout pika 1.x, which the pin in pyproject keeps.)
    """

    _held: list[bytes] | None = None

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        if self._held is None:
            super()._output_marshaled_frames(marshaled_frames)
            return
        for marshaled in marshaled_frames:
            self.bytes_sent += len(marshaled)
            self.frames_sent += 1
        self._held.extend(marshaled_frames)

    @contextmanager
    def coalesced(self) -> Iterator[None]:
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held and not self.is_closed:
                self._adapter_emit_data(b"".join(held))


@dataclass(frozen=True)
class Outgoing:
    """One message to publish on the default exchange."""

    routing_key: str
    body: bytes
    message_id: str
    priority: int = 0
    republished: bool = False  # a copy of a message that may have been delivered already (see REPUBLISHED_HEADER)
    expiration_ms: int | None = None  # a delayed task's wait in its delay queue (`taskq.broker.delayed`)

    def properties(self) -> BasicProperties:
        return BasicProperties(
            delivery_mode=PERSISTENT,
            content_type="application/json",
            message_id=self.message_id,
            priority=self.priority,
            headers={REPUBLISHED_HEADER: True} if self.republished else None,
            expiration=str(self.expiration_ms) if self.expiration_ms is not None else None,
        )


@dataclass
class _StreamState:
    """What the I/O thread knows about one stream (touched only from the I/O thread)."""

    events: queue.SimpleQueue[tuple[str, Any]]
    pending: collections.deque[Outgoing] = field(default_factory=collections.deque)


class PublishStream:
    """Messages of one caller, published in order, confirmed in any order; `wait` blocks until all are."""

    def __init__(self, publisher: ConfirmingPublisher, on_confirmed: Callable[[int], None] | None) -> None:
        self._publisher = publisher
        self._on_confirmed = on_confirmed
        self._state = _StreamState(events=queue.SimpleQueue())
        self.added = 0
        self.confirmed = 0
        self._unsettled: set[str] = set()
        self._acked: list[str] = []
        self._problems: list[str] = []
        self._lost: str | None = None

    def add(self, messages: Sequence[Outgoing]) -> None:
        """Queue `messages` for publishing; blocks while too many of this stream's are unconfirmed."""
        if not messages:
            return
        self._unsettled.update(m.message_id for m in messages)
        self._check()
        limit = self._publisher.window * 4
        deadline = time.monotonic() + STALL_TIMEOUT_S
        while self.added - self.confirmed > limit:
            if not self._drain(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(f"broker at {self._publisher.where} stopped confirming publishes")
            else:
                deadline = time.monotonic() + STALL_TIMEOUT_S
            self._check()
        self.added += len(messages)
        self._publisher._enqueue(self._state, list(messages))

    def wait(self) -> None:
        """Block until every added message is confirmed; raise on a nack, a return or a lost broker."""
        deadline = time.monotonic() + STALL_TIMEOUT_S
        while self.confirmed + len(self._problems) < self.added and self._lost is None:
            if self._drain(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                deadline = time.monotonic() + STALL_TIMEOUT_S
            elif time.monotonic() >= deadline:
                raise BrokerUnavailable(f"broker at {self._publisher.where} stopped confirming publishes")
        self._check()

    def unconfirmed(self) -> set[str]:
        """Ids of added messages the broker has not confirmed (all of them after a failure: may or may not be queued)."""
        return set(self._unsettled)

    def take_confirmed(self) -> list[str]:
        """Ids confirmed by the broker since the last call (for the producer to record the publish)."""
        self._drain(timeout=0)
        taken, self._acked = self._acked, []
        return taken

    def _check(self) -> None:
        if self._lost is not None:
            raise BrokerUnavailable(self._lost)
        if self._problems:
            raise BrokerRejected(
                f"broker at {self._publisher.where} did not accept {len(self._problems)} message(s): {self._problems[0]}"
            )

    def _drain(self, timeout: float) -> bool:
        """Apply the I/O thread's reports; True when at least one arrived."""
        try:
            kind, value = self._state.events.get(timeout=timeout)
        except queue.Empty:
            return False
        while True:
            if kind == "ack":
                self.confirmed += len(value)
                self._unsettled.difference_update(value)
                self._acked.extend(value)
                if self._on_confirmed is not None:
                    self._on_confirmed(len(value))
            elif kind == "problem":
                self._problems.append(value[1])
            else:
                self._lost = str(value)
            try:
                kind, value = self._state.events.get_nowait()
            except queue.Empty:
                return True


class ConfirmingPublisher:
    """A long-lived confirming publisher: one connection and channel, driven by a private I/O thread.

    The connection opens lazily and reopens on the next stream after it was lost; messages that were
    unconfirmed when it was lost are reported to their stream as a `BrokerUnavailable` (they may or
    may not have reached the queue: publishing is at-least-once).
    """

    def __init__(self, url: str, *, name: str = "taskq-producer", window: int = DEFAULT_WINDOW) -> None:
        self._url = url
        self.where = redact_url(url)
        self._name = name
        self.window = window
        self._lock = threading.Lock()
        self._connection: _CoalescingConnection | None = None
        self._channel: Channel | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: str | None = None
        self._closing = False
        # Owned by the I/O thread from here on.
        self._streams: collections.deque[_StreamState] = collections.deque()
        self._unconfirmed: collections.OrderedDict[int, tuple[_StreamState, str]] = collections.OrderedDict()
        self._returned: dict[str, str] = {}
        self._next_tag = 1

    # -- caller side --------------------------------------------------------------------------

    def stream(self, on_confirmed: Callable[[int], None] | None = None) -> PublishStream:
        """A new stream; the connection is opened (or reopened) here if needed."""
        self._ensure_open()
        return PublishStream(self, on_confirmed)

    def publish(self, messages: Iterable[Outgoing], on_confirmed: Callable[[int], None] | None = None) -> int:
        """Publish `messages` and wait for all confirms; returns how many were published."""
        stream = self.stream(on_confirmed)
        batch: list[Outgoing] = []
        for message in messages:
            batch.append(message)
            if len(batch) >= self.window:
                stream.add(batch)
                batch = []
        stream.add(batch)
        stream.wait()
        return stream.added

    def close(self) -> None:
        """Close the connection and stop the I/O thread (waits briefly for it)."""
        with self._lock:
            connection, thread = self._connection, self._thread
            self._closing = True
        if connection is not None and thread is not None and thread.is_alive():
            connection.ioloop.add_callback_threadsafe(self._close_in_loop)
            thread.join(timeout=5)

    def _ensure_open(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._ready.is_set() and self._open_error is None:
                return
            if self._thread is not None and self._thread.is_alive():
                # Still opening (another caller started it) or closing: wait for that first.
                self._thread.join(timeout=CONNECT_TIMEOUT_S)
            self._closing = False
            self._ready.clear()
            self._open_error = None
            self._thread = threading.Thread(target=self._run, name="taskq-publisher-io", daemon=True)
            self._thread.start()
            if not self._ready.wait(timeout=CONNECT_TIMEOUT_S):
                raise BrokerUnavailable(f"broker at {self.where} did not open a connection in {CONNECT_TIMEOUT_S:.0f} s")
            if self._open_error is not None:
                raise BrokerUnavailable(self._open_error)

    def _enqueue(self, state: _StreamState, messages: list[Outgoing]) -> None:
        connection = self._connection
        if connection is None or self._open_error is not None:
            state.events.put(("lost", f"broker at {self.where} connection is closed"))
            return
        try:
            connection.ioloop.add_callback_threadsafe(lambda: self._accept(state, messages))
        except (pe.AMQPError, RuntimeError, OSError, AttributeError):
            state.events.put(("lost", f"broker at {self.where} connection is closed"))

    # -- I/O thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            params = parameters(self._url, name=self._name)
        except BrokerUnavailable as exc:
            self._open_error = str(exc)
            self._ready.set()
            return
        self._streams.clear()
        self._unconfirmed.clear()
        self._returned.clear()
        self._next_tag = 1
        connection = _CoalescingConnection(
            params,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self._connection = connection
        try:
            connection.ioloop.start()
        finally:
            self._fail_all(f"broker at {self.where} connection lost")
            self._channel = None
            if not self._ready.is_set():
                self._open_error = self._open_error or f"broker at {self.where} unreachable"
                self._ready.set()

    def _on_connection_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, connection: SelectConnection, error: BaseException | str) -> None:
        if isinstance(error, pe.ProbableAuthenticationError):
            reason = "refused the credentials"
        elif isinstance(error, pe.ProbableAccessDeniedError):
            reason = "denied access to the vhost"
        else:
            reason = f"unreachable: {type(error).__name__}"
        self._open_error = f"broker at {self.where} {reason}"
        self._ready.set()
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: SelectConnection, reason: BaseException) -> None:
        if not self._closing:
            self._open_error = f"broker at {self.where} closed the connection: {type(reason).__name__}"
        self._fail_all(f"broker at {self.where} connection lost: {type(reason).__name__}")
        connection.ioloop.stop()

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Method) -> None:
        self._ready.set()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        self._channel = None
        if not self._closing:
            self._open_error = f"broker at {self.where} closed the publishing channel: {reason}"
        self._fail_all(f"broker at {self.where} closed the publishing channel: {reason}")
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    def _close_in_loop(self) -> None:
        connection = self._connection
        if connection is None:
            return
        if connection.is_closed or connection.is_closing:
            connection.ioloop.stop()
        else:
            connection.close()

    def _accept(self, state: _StreamState, messages: list[Outgoing]) -> None:
        if self._channel is None or not self._channel.is_open:
            state.events.put(("lost", f"broker at {self.where} connection is closed"))
            return
        was_idle = not state.pending
        state.pending.extend(messages)
        if was_idle:
            self._streams.append(state)
        self._pump()

    def _pump(self) -> None:
        """Publish pending messages, round-robin over streams, while the window has room."""
        channel, connection = self._channel, self._connection
        if channel is None or connection is None:
            return
        while self._streams and len(self._unconfirmed) < self.window:
            with connection.coalesced():  # one socket write per burst of up to BURST messages
                self._publish_burst(channel, min(BURST, self.window - len(self._unconfirmed)))

    def _publish_burst(self, channel: Channel, room: int) -> None:
        while room > 0 and self._streams:
            state = self._streams[0]
            take = min(room, len(state.pending), 64)
            for _ in range(take):
                message = state.pending.popleft()
                channel.basic_publish(
                    exchange="",
                    routing_key=message.routing_key,
                    body=message.body,
                    properties=message.properties(),
                    mandatory=True,
                )
                self._unconfirmed[self._next_tag] = (state, message.message_id)
                self._next_tag += 1
            room -= take
            self._streams.popleft()
            if state.pending:
                self._streams.append(state)

    def _on_return(self, _channel: Channel, method: Basic.Return, properties: BasicProperties, _body: bytes) -> None:
        if properties.message_id:
            self._returned[properties.message_id] = f"{method.reply_code} {method.reply_text} (queue {method.routing_key!r})"

    def _on_confirm(self, frame: Method) -> None:
        method = frame.method
        tag = method.delivery_tag
        if method.multiple:
            tags = []
            for t in self._unconfirmed:  # oldest first: stop at the first tag above the confirmed one
                if t > tag:
                    break
                tags.append(t)
        else:
            tags = [tag] if tag in self._unconfirmed else []
        acked = isinstance(method, Basic.Ack)
        acks: dict[int, tuple[_StreamState, list[str]]] = {}
        for t in tags:
            state, message_id = self._unconfirmed.pop(t)
            returned = self._returned.pop(message_id, None) if self._returned else None
            if not acked:
                state.events.put(("problem", (message_id, f"the broker nacked message {message_id}")))
            elif returned is not None:
                # An unroutable message is returned first and acked after: it is not delivered.
                state.events.put(("problem", (message_id, f"message {message_id} returned: {returned}")))
            else:
                acks.setdefault(id(state), (state, []))[1].append(message_id)
        for state, message_ids in acks.values():
            state.events.put(("ack", message_ids))
        self._pump()

    def _fail_all(self, reason: str) -> None:
        states = {id(s): s for s, _ in self._unconfirmed.values()}
        states.update({id(s): s for s in self._streams})
        for state in states.values():
            state.pending.clear()
            state.events.put(("lost", reason))
        self._unconfirmed.clear()
        self._streams.clear()
