"""taskq's own errors: what adapters raise instead of pika/pymongo exceptions.

Messages name the component and the host but never credentials (see `redact_url`).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class TaskqError(Exception):
    """Base of every error taskq raises on purpose."""


class BrokerUnavailable(TaskqError):
    """RabbitMQ cannot be reached or dropped the connection."""


class BrokerRejected(TaskqError):
    """RabbitMQ refused an operation (a publish not confirmed, a declare with other arguments)."""


class StoreUnavailable(TaskqError):
    """The MongoDB-protocol store cannot be reached or timed out."""


class TaskNotFound(TaskqError):
    """No task with that id."""


class QueueNotFound(TaskqError):
    """No such taskq queue on the broker."""


class UnknownTask(TaskqError):
    """No task function registered under that name."""


class InvalidTask(TaskqError):
    """A submission that is not a valid task (bad name, queue, arguments that are not JSON)."""


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if user else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
