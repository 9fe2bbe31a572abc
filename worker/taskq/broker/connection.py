"""Opening pika connections with sane defaults, and translating pika's errors into taskq's own.

Called by the publisher, the worker's consumer, the CLI and the operator's broker observer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pika
import pika.exceptions as pe
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from taskq.errors import BrokerRejected, BrokerUnavailable, redact_url

DEFAULT_HEARTBEAT_S = 30
HANDSHAKE_TIMEOUT_S = 10
# AMQPConnectorException: pika's own connector errors (e.g. a broker that accepts the TCP connection and
# never answers the AMQP handshake: AMQPConnectorStackTimeout) are not AMQPErrors.
_CONNECTION_ERRORS = (
    pe.AMQPConnectionError,
    pe.ConnectionClosed,
    pe.StreamLostError,
    AMQPConnectorException,
    ConnectionError,
    OSError,
)


def parameters(url: str, *, name: str, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> pika.URLParameters:
    """Connection parameters from `url`, labelled `name` in the broker's connection list."""
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # noqa: BLE001 - pika raises several unrelated types for malformed URLs
        raise BrokerUnavailable(f"invalid AMQP URL {redact_url(url)}: {type(exc).__name__}") from None
    params.heartbeat = heartbeat_s
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.stack_timeout = HANDSHAKE_TIMEOUT_S  # TCP connect plus the AMQP handshake, as a whole
    params.client_properties = {"connection_name": name}
    return params


def connect(url: str, *, name: str, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> pika.BlockingConnection:
    """A blocking connection, or `BrokerUnavailable` naming the host but not the credentials."""
    params = parameters(url, name=name, heartbeat_s=heartbeat_s)
    try:
        return pika.BlockingConnection(params)
    except pe.ProbableAuthenticationError:
        raise BrokerUnavailable(f"broker at {redact_url(url)} refused the credentials") from None
    except pe.ProbableAccessDeniedError:
        raise BrokerUnavailable(f"broker at {redact_url(url)} denied access to the vhost") from None
    except _CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"broker at {redact_url(url)} unreachable: {type(exc).__name__}") from None


@contextmanager
def translated(what: str, where: str) -> Iterator[None]:
    """Turn pika errors raised inside the block into `BrokerUnavailable` / `BrokerRejected`."""
    try:
        yield
    except pe.ChannelClosedByBroker as exc:
        raise BrokerRejected(f"broker at {where} refused {what}: {exc.reply_code} {exc.reply_text}") from None
    except (pe.NackError, pe.UnroutableError) as exc:
        raise BrokerRejected(f"broker at {where} did not confirm {what}: {type(exc).__name__}") from None
    except (pe.AMQPError, *_CONNECTION_ERRORS) as exc:
        raise BrokerUnavailable(f"broker at {where} lost while {what}: {type(exc).__name__}") from None
