"""taskq's own errors: what adapters raise instead of pika/pymongo exceptions.

Messages name the component and the host but never credentials (see `redact_url`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote


class TaskqError(Exception):
    """Base of every error taskq raises on purpose."""


class BrokerUnavailable(TaskqError):
    """RabbitMQ cannot be reached or dropped the connection."""


class BrokerRejected(TaskqError):
    """RabbitMQ refused an operation (a publish not confirmed, a declare with other arguments)."""


class StoreUnavailable(TaskqError):
    """The MongoDB-protocol store cannot be reached or timed out."""


class InvalidStoreURI(TaskqError):
    """The store URI (or one of its options) is not valid: a configuration error, not an outage."""


class StoreRefused(TaskqError):
    """The store refused a write as invalid (a document it cannot encode or store); retrying it won't help."""


class TaskNotFound(TaskqError):
    """No task with that id."""


class QueueNotFound(TaskqError):
    """No such taskq queue on the broker."""


class UnknownTask(TaskqError):
    """No task function registered under that name."""


class InvalidTask(TaskqError):
    """A submission that is not a valid task (bad name, queue, arguments that are not JSON)."""


class TaskConflict(TaskqError):
    """A caller-given task id that exists already as another task (another queue or task name)."""

    def __init__(self, message: str, task_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.task_ids = list(task_ids or [])


class TaskStateConflict(TaskqError):
    """An action the task's state does not allow (retrying a task that is neither failed nor dead)."""


class WaitTimedOut(TaskqError):
    """`Client.wait` ran out of time: `pending` ids were not final yet; `finished` holds the final documents."""

    def __init__(self, message: str, pending: list[str], finished: dict[str, dict[str, object]]) -> None:
        super().__init__(message)
        self.pending = list(pending)
        self.finished = dict(finished)


_SECRET_QUERY_WORDS = ("password", "passwd", "secret", "token", "credential", "authmechanismproperties", "ssl_options")
_MASK = "***"


def _redact_query(query: str) -> str:
    """Mask the value of every query option that can carry a secret (any form pymongo or pika reads)."""
    if not query:
        return query
    parts = []
    for item in query.split("&"):
        key, sep, _value = item.partition("=")
        if sep and any(word in key.lower() for word in _SECRET_QUERY_WORDS):
            parts.append(f"{key}={_MASK}")
        else:
            parts.append(item)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """`url` with its password and secret-bearing query options replaced by `***`, for logs and errors.

    Works on every form pymongo and pika accept without parsing ports or hosts (so a replica-set
    list `h1:27017,h2:27017`, `mongodb+srv`, IPv6 hosts and invalid ports never raise), and never
    raises itself: what cannot be read at all becomes `<unparseable url>`.
    """
    try:
        scheme, sep, rest = url.partition("://")
        if not sep:
            return _redact_query(url) if "@" not in url else "<unparseable url>"
        # The authority ends at the first '/', '?' or '#' after the last '@' of the credentials.
        match = re.match(r"(?P<authority>[^/?#]*@)?(?P<rest>.*)", rest, re.DOTALL)
        assert match is not None
        authority = match.group("authority") or ""
        tail = match.group("rest")
        if not authority and "@" in tail.split("?", 1)[0].split("#", 1)[0]:
            # An unencoded '@' inside the password: the credentials run to the last '@' before the path.
            head, _, tail = tail.rpartition("@")
            authority = head + "@"
        if authority:
            userinfo = authority[:-1]
            user = userinfo.split(":", 1)[0]
            authority = f"{user}:{_MASK}@" if ":" in userinfo or not user else f"{user}@"
        hosts_and_path, qsep, query_and_fragment = tail.partition("?")
        if qsep:
            query, fsep, fragment = query_and_fragment.partition("#")
            tail = f"{hosts_and_path}?{_redact_query(query)}{fsep}{fragment}"
        return f"{scheme}://{authority}{tail}"
    except Exception:  # noqa: BLE001 - a redactor must never be the reason a log line or an error fails
        return "<unparseable url>"


def url_secrets(url: str) -> list[str]:
    """The secret values inside `url` (its password, secret-bearing query values), longest first."""
    found: list[str] = []
    try:
        _, sep, rest = url.partition("://")
        authority = rest.rsplit("@", 1)[0] if sep and "@" in rest else ""
        if ":" in authority:
            found.append(authority.split(":", 1)[1])
        query = url.split("?", 1)[1].split("#", 1)[0] if "?" in url else ""
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if eq and value and any(word in key.lower() for word in _SECRET_QUERY_WORDS):
                found.append(value)
    except Exception:  # noqa: BLE001 - best effort: redact_url stays the first line of defence
        return []
    expanded = set(found) | {unquote(value) for value in found}
    return sorted((value for value in expanded if value), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (say, a library's error message about `url`) with every secret of `url` replaced by `***`."""
    for secret in url_secrets(url):
        text = text.replace(secret, _MASK)
    return text
