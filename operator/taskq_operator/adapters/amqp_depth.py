"""Exact ready and consumer counts of many queues at once: passive declares over a lean AMQP connection.

pika handles each passive `queue_declare` as a synchronous RPC (callback registrations, one RPC in
flight per channel, one socket write per frame): about 100 µs of operator CPU per queue, which at
2,000 TaskQueues on a 2 s poll is a tenth of a core by itself. `DepthReader` speaks just enough AMQP
0-9-1 for this one job on a connection of its own: the handshake (frames encoded and decoded with
pika's `spec`, credentials and TLS options from pika's `URLParameters`), then every queue's passive
`Queue.Declare` written in one buffer per channel, and the `DeclareOk` replies decoded as they stream
back (the broker answers a channel's methods in order). Every frame goes through pika's own codec
(`pika.frame`, `pika.spec`): what pika costs is its RPC bookkeeping, not the codec (3 µs to encode a
declare, 4 µs to decode a reply). A missing queue
makes the broker close that channel (404): its count is None, the channel is reopened and the queues
after it are sent again. No heartbeats: the connection is driven only while reading.

Used by `taskq_operator.adapters.broker.BrokerObserver.ready_counts` (blocking; in the observers'
pool threads, one reader per broker, guarded by the observer's lock). Errors are `taskq.errors` types
whose messages never contain credentials.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from dataclasses import dataclass, field

import pika
from pika import frame as amqp_frame
from pika import spec

from taskq.broker.connection import parameters
from taskq.errors import BrokerRejected, BrokerUnavailable, redact_url

CHANNELS = 4
"""Channels the declares are spread over, so the broker works on several at once."""
WINDOW = 256
"""Declares sent and not yet answered per channel; more are sent as the replies come back."""
LOW_WATER = 64
NOT_FOUND = 404


@dataclass(frozen=True)
class Depth:
    """What one passive declare tells: ready messages and consumers."""

    ready: int
    consumers: int


def method_frame(channel: int, method: pika.amqp_object.Method) -> bytes:
    return bytes(amqp_frame.Method(channel, method).marshal())


@dataclass
class _Lane:
    """One channel: the queues sent and not yet answered, in order, and those waiting for a reopened channel."""

    number: int
    sent: deque[str] = field(default_factory=deque)
    """Sent, not yet answered, in order."""
    waiting: list[str] = field(default_factory=list)
    reopening: bool = False


class DepthReader:
    """One lean AMQP connection to one broker for bulk passive declares; reconnects after any failure."""

    def __init__(self, amqp_url: str, *, name: str = "taskq-operator", timeout_s: float = 5.0) -> None:
        self._url = amqp_url
        self._where = redact_url(amqp_url)
        self._name = name
        self._timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    # -- connection ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A connection from an earlier read is open (it may still turn out dead)."""
        return self._sock is not None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer.clear()
        if sock is not None:
            try:
                sock.settimeout(0.5)
                sock.sendall(method_frame(0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)))
            except OSError:
                pass
            sock.close()

    def _connect(self, deadline: float) -> socket.socket:
        params = parameters(self._url, name=self._name, heartbeat_s=0)  # BrokerUnavailable for a malformed URL
        try:
            sock = socket.create_connection((params.host, params.port), timeout=max(0.1, deadline - time.monotonic()))
        except OSError as exc:
            raise BrokerUnavailable(f"broker at {self._where} unreachable: {type(exc).__name__}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if params.ssl_options is not None:
                sock = params.ssl_options.context.wrap_socket(
                    sock, server_hostname=params.ssl_options.server_hostname or params.host
                )
            self._sock = sock
            self._buffer.clear()
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            start = self._expect_method(0, spec.Connection.Start, deadline)
            mechanism, response = params.credentials.response_for(start)
            if mechanism is None:
                raise BrokerUnavailable(f"broker at {self._where} offers no authentication mechanism the operator has")
            properties = {"connection_name": self._name, "product": "taskq-operator", "capabilities": {}}
            sock.sendall(method_frame(0, spec.Connection.StartOk(properties, mechanism, response)))
            tune = self._expect_method(0, spec.Connection.Tune, deadline)
            frame_max = min(tune.frame_max or 131072, 131072)
            sock.sendall(method_frame(0, spec.Connection.TuneOk(tune.channel_max or 2047, frame_max, 0)))
            sock.sendall(method_frame(0, spec.Connection.Open(virtual_host=params.virtual_host)))
            self._expect_method(0, spec.Connection.OpenOk, deadline)
            sock.sendall(b"".join(method_frame(n, spec.Channel.Open()) for n in range(1, CHANNELS + 1)))
            for _ in range(CHANNELS):
                self._expect_method(None, spec.Channel.OpenOk, deadline)
        except BaseException:
            self.close()
            raise
        return sock

    def _expect_method(self, channel: int | None, kind: type, deadline: float) -> pika.amqp_object.Method:
        """The next method frame, which must be `kind` (on `channel` unless None); a close or EOF fails."""
        while True:
            decoded = self._next_generic(deadline)
            if decoded is None:
                continue
            number, method = decoded
            if isinstance(method, spec.Connection.Close):
                if method.reply_code == 403 or "ACCESS_REFUSED" in str(method.reply_text):
                    raise BrokerUnavailable(f"broker at {self._where} refused the credentials or the vhost")
                raise BrokerUnavailable(f"broker at {self._where} closed the connection: {method.reply_code}")
            if isinstance(method, kind) and (channel is None or number == channel):
                return method
            raise BrokerUnavailable(f"broker at {self._where} answered {method.NAME} during the handshake")

    def _next_generic(self, deadline: float) -> tuple[int, pika.amqp_object.Method] | None:
        """One decoded method frame from the buffer (reading more as needed); None for a frame that is not one."""
        while True:
            buffer = self._buffer
            # Only the first frame is copied for pika's decoder (its size is in its 7-byte header), not the
            # whole buffer: a read streams back a thousand replies in one buffer.
            size = 8 + int.from_bytes(buffer[3:7], "big") if len(buffer) >= 7 and buffer[:4] != b"AMQP" else len(buffer)
            if len(buffer) < size or not buffer:
                self._fill(deadline)
                continue
            try:
                consumed, decoded = amqp_frame.decode_frame(bytes(buffer[:size]))
            except Exception as exc:  # noqa: BLE001 - pika raises several types for garbage
                raise BrokerUnavailable(f"broker at {self._where} sent an unreadable frame: {type(exc).__name__}") from None
            if consumed:
                del self._buffer[:consumed]
                if isinstance(decoded, amqp_frame.Method):
                    return decoded.channel_number, decoded.method
                if isinstance(decoded, amqp_frame.ProtocolHeader):
                    raise BrokerUnavailable(f"broker at {self._where} does not speak AMQP 0-9-1")
                return None
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerUnavailable(f"broker at {self._where} did not answer in time")
        self._sock.settimeout(left)
        try:
            data = self._sock.recv(262144)
        except TimeoutError:
            raise BrokerUnavailable(f"broker at {self._where} did not answer in time") from None
        except OSError as exc:
            raise BrokerUnavailable(f"broker at {self._where} lost while reading queues: {type(exc).__name__}") from None
        if not data:
            raise BrokerUnavailable(f"broker at {self._where} closed the connection")
        self._buffer += data

    # -- reading ------------------------------------------------------------------------------

    def depths(self, queues: list[str]) -> dict[str, Depth | None]:
        """Ready and consumer counts of every queue (None: it does not exist); one connection attempt."""
        deadline = time.monotonic() + self._timeout_s
        sock = self._sock or self._connect(deadline)
        try:
            return self._read(sock, queues, deadline)
        except BaseException:
            self.close()
            raise

    def _read(self, sock: socket.socket, queues: list[str], deadline: float) -> dict[str, Depth | None]:
        counts: dict[str, Depth | None] = {}
        lanes = [_Lane(n) for n in range(1, CHANNELS + 1)]
        remaining = 0
        for i, queue in enumerate(dict.fromkeys(queues)):
            if len(queue.encode()) > 255:
                counts[queue] = None  # no such queue can exist (AMQP names are short strings)
            else:
                lanes[i % CHANNELS].waiting.append(queue)
                remaining += 1
        for each in lanes:
            self._top_up(sock, each)
        reopening = 0  # channels closed by a missing queue whose Channel.OpenOk has not come yet
        while remaining or reopening:
            decoded = self._next_generic(deadline)
            if decoded is None:
                continue  # heartbeats and anything else that is not a method: nothing to do
            number, method = decoded
            lane: _Lane | None = lanes[number - 1] if 1 <= number <= CHANNELS else None
            if isinstance(method, spec.Queue.DeclareOk) and lane is not None and lane.sent:
                if method.queue != lane.sent[0]:
                    raise BrokerUnavailable(f"broker at {self._where} answered for queue {method.queue!r} out of order")
                lane.sent.popleft()
                counts[method.queue] = Depth(method.message_count, method.consumer_count)
                remaining -= 1
                if len(lane.sent) <= LOW_WATER and lane.waiting:
                    self._top_up(sock, lane)
            elif isinstance(method, spec.Connection.Close) or lane is None:
                raise BrokerUnavailable(f"broker at {self._where} closed the connection: {getattr(method, 'reply_code', '?')}")
            elif isinstance(method, spec.Channel.Close) and lane.sent:
                sock.sendall(method_frame(number, spec.Channel.CloseOk()))
                failed = lane.sent.popleft()
                if method.reply_code != NOT_FOUND:
                    raise BrokerRejected(
                        f"broker at {self._where} refused reading queue {failed!r}: {method.reply_code} {method.reply_text}"
                    )
                counts[failed] = None
                remaining -= 1
                lane.waiting[:0] = lane.sent  # the broker discarded what followed the missing queue: sent again
                lane.sent.clear()
                lane.reopening = True
                reopening += 1
                sock.sendall(method_frame(number, spec.Channel.Open()))
            elif isinstance(method, spec.Channel.OpenOk) and lane.reopening:
                lane.reopening = False
                reopening -= 1
                self._top_up(sock, lane)
            else:
                raise BrokerUnavailable(f"broker at {self._where} answered {method.NAME} to a queue read")
        return counts

    @staticmethod
    def _top_up(sock: socket.socket, lane: _Lane) -> None:
        """Send the lane's next declares, up to `WINDOW` unanswered (bounded: the broker's replies must fit our buffer)."""
        if lane.reopening:
            return
        room = WINDOW - len(lane.sent)
        batch, lane.waiting = lane.waiting[:room], lane.waiting[room:]
        if batch:
            lane.sent.extend(batch)
            sock.sendall(b"".join([method_frame(lane.number, spec.Queue.Declare(queue=queue, passive=True)) for queue in batch]))
