"""Reading queue depth from RabbitMQ, batched per broker: AMQP passive declares plus the management API.

One `BrokerObserver` per broker (AMQP URL + management URL) serves every TaskQueue on it:
- `ready_counts(queues)`: exact ready and consumer counts by passive `queue_declare`, pipelined over a
  few channels of one long-lived lean connection (`taskq_operator.adapters.amqp_depth`: frames encoded
  and parsed by hand, a few µs of CPU per queue), reconnecting when the broker went away;
- `management(vhost)`: unacked counts and rates for the whole vhost from ONE `GET /api/queues/<vhost>`
  request, cached for the statistics interval (the figures only move that often);
  `management_cached(vhost)` serves the cache (with its age) at once and refreshes it in the background.
- `declare(queue, ...)`: the queue topology, through the runtime's `taskq.broker.topology`.

Blocking (pika, httpx sync); the scaler calls these in worker threads. Errors become `taskq.errors`
types whose messages never contain credentials.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import httpx
import pika.exceptions as pe
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from taskq.broker.connection import connect
from taskq.broker.topology import declare_queue_topology
from taskq.errors import BrokerUnavailable, redact_url
from taskq_operator.adapters.amqp_depth import Depth, DepthReader

MANAGEMENT_COLUMNS = ",".join(
    [
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "message_stats.publish_details.rate",
        "message_stats.deliver_get_details.rate",
    ]
)


ReadyCount = Depth
"""What a passive declare tells: exact ready messages and consumers (None when the queue is missing)."""


@dataclass(frozen=True)
class ManagementFigures:
    """One queue's row from the management API (lagging by up to a statistics interval)."""

    unacked: int
    ready: int
    consumers: int
    publish_rate: float | None
    deliver_rate: float | None


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL points at (`/` when the path is empty)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _rate(row: dict[str, object], key: str) -> float | None:
    stats = row.get("message_stats")
    if not isinstance(stats, dict):
        return None
    details = stats.get(key)
    if not isinstance(details, dict):
        return None
    rate = details.get("rate")
    return float(rate) if isinstance(rate, (int, float)) else None


def parse_management_rows(rows: list[dict[str, object]]) -> dict[str, ManagementFigures]:
    """Rows of `GET /api/queues/<vhost>` by queue name."""
    figures: dict[str, ManagementFigures] = {}
    for row in rows:
        name = row.get("name")
        if not isinstance(name, str):
            continue
        figures[name] = ManagementFigures(
            unacked=int(row.get("messages_unacknowledged") or 0),  # type: ignore[call-overload]
            ready=int(row.get("messages_ready") or 0),  # type: ignore[call-overload]
            consumers=int(row.get("consumers") or 0),  # type: ignore[call-overload]
            publish_rate=_rate(row, "publish_details"),
            deliver_rate=_rate(row, "deliver_get_details"),
        )
    return figures


class BrokerObserver:
    """Reads for every TaskQueue on one broker; one AMQP connection and one HTTP client, reused."""

    def __init__(
        self,
        amqp_url: str,
        management_url: str | None,
        *,
        management_ttl_s: float = 5.0,
        timeout_s: float = 5.0,
    ) -> None:
        self._amqp_url = amqp_url
        self._where = redact_url(amqp_url)
        self._management_url = management_url
        self._management_ttl_s = management_ttl_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._depths = DepthReader(amqp_url, name="taskq-operator", timeout_s=timeout_s)
        self._http: httpx.Client | None = None
        self._management_cache: dict[str, tuple[float, dict[str, ManagementFigures]]] = {}
        self._management_lock = threading.Lock()
        self._management_errors: dict[str, str] = {}
        self._refreshing: set[str] = set()
        self.management_requests = 0

    @property
    def vhost(self) -> str:
        return vhost_of(self._amqp_url)

    @property
    def has_management(self) -> bool:
        return bool(self._management_url)

    # -- AMQP ---------------------------------------------------------------------------------

    def ready_counts(self, queues: list[str]) -> dict[str, ReadyCount | None]:
        """Exact ready/consumer counts per queue (None for a queue that does not exist).

        A connection found dead is replaced once before giving up (`BrokerUnavailable`); a new one that
        cannot be made is not tried twice.
        """
        with self._lock:
            reused = self._depths.connected
            try:
                depths = self._depths.depths(queues)
            except BrokerUnavailable:
                if not reused:
                    raise
                depths = self._depths.depths(queues)  # the reader reconnects after any failure
        return depths

    def declare(
        self, queue: str, *, max_priority: int, task_timeout_s: float, queue_type: str = "classic", max_deliveries: int = 5
    ) -> None:
        """Declare the queue and its dead-letter queue if missing (idempotent, never re-argues)."""
        try:
            connection = connect(self._amqp_url, name="taskq-operator-declare")
        except AMQPConnectorException as exc:
            raise BrokerUnavailable(f"broker at {self._where} unreachable: {type(exc).__name__}") from None
        try:
            declare_queue_topology(
                connection,
                queue,
                max_priority=max_priority,
                task_timeout_s=task_timeout_s,
                queue_type=queue_type,
                max_deliveries=max_deliveries,
            )
        finally:
            with contextlib.suppress(pe.AMQPError, OSError):  # closing a broken connection
                connection.close()

    # -- management API -----------------------------------------------------------------------

    def _client(self) -> tuple[httpx.Client, str]:
        assert self._management_url is not None
        parts = urlsplit(self._management_url)
        base = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path.rstrip("/")
        if self._http is None:
            auth = None
            if parts.username is not None:
                auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
            self._http = httpx.Client(auth=auth, timeout=self._timeout_s)
        return self._http, base

    def management(self, vhost: str, *, now: float | None = None) -> dict[str, ManagementFigures]:
        """Every queue of `vhost` from one request, reused for `management_ttl_s`."""
        if not self._management_url:
            return {}
        moment = time.monotonic() if now is None else now
        cached = self._management_cache.get(vhost)
        if cached is not None and moment - cached[0] < self._management_ttl_s:
            return cached[1]
        client, base = self._client()
        url = f"{base}/api/queues/{quote(vhost, safe='')}"
        try:
            response = client.get(url, params={"columns": MANAGEMENT_COLUMNS})
            self.management_requests += 1
            response.raise_for_status()
            rows = response.json()
        except httpx.HTTPStatusError as exc:
            raise BrokerUnavailable(f"management API at {redact_url(base)} answered {exc.response.status_code}") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise BrokerUnavailable(f"management API at {redact_url(base)} unreachable: {type(exc).__name__}") from None
        if not isinstance(rows, list):
            raise BrokerUnavailable(f"management API at {redact_url(base)} returned no queue list")
        figures = parse_management_rows(rows)
        self._management_cache[vhost] = (moment, figures)
        return figures

    def management_cached(self, vhost: str) -> tuple[dict[str, ManagementFigures], float | None, str | None]:
        """(figures, their age in seconds, last error) for `vhost` without waiting; refreshes in the background.

        Keeps the HTTP request (tens of ms to seconds with many queues on a busy broker) off the scaling
        path. The age is None before the first answer; whether figures are recent enough to act on is
        the operator core's rule (`taskq_operator.core.measure`). `error` is the last refresh's failure.
        """
        if not self._management_url:
            return {}, None, None
        cached = self._management_cache.get(vhost)
        now = time.monotonic()
        if (cached is None or now - cached[0] >= self._management_ttl_s) and vhost not in self._refreshing:
            self._refreshing.add(vhost)
            threading.Thread(target=self._refresh, args=(vhost,), name="taskq-management", daemon=True).start()
        if cached is None:
            return {}, None, self._management_errors.get(vhost)
        return cached[1], now - cached[0], self._management_errors.get(vhost)

    def management_recent(self, vhost: str, max_age_s: float = 60.0) -> tuple[dict[str, ManagementFigures], str | None]:
        """`management_cached` without figures older than `max_age_s`: (figures, last error)."""
        figures, age_s, error = self.management_cached(vhost)
        return (figures if age_s is not None and age_s < max_age_s else {}), error

    def _refresh(self, vhost: str) -> None:
        try:
            with self._management_lock:
                self.management(vhost)
            self._management_errors.pop(vhost, None)
        except BrokerUnavailable as exc:
            self._management_errors[vhost] = str(exc)
        finally:
            self._refreshing.discard(vhost)

    def close(self) -> None:
        with self._lock:
            self._depths.close()
        if self._http is not None:
            self._http.close()
            self._http = None
