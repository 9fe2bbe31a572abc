"""Prometheus metrics of the operator: backlog and replicas per TaskQueue, scaling decisions, tick cost.

Updated by `taskq_operator.scaler`; served by `taskq-operator --metrics-port` (`start_metrics_server`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LABELS = ("namespace", "taskqueue")

BACKLOG_READY = Gauge("taskq_operator_backlog_ready", "Ready messages in the TaskQueue's queue", LABELS)
BACKLOG_UNACKED = Gauge("taskq_operator_backlog_unacked", "Delivered, not yet acknowledged messages", LABELS)
DESIRED_REPLICAS = Gauge("taskq_operator_desired_replicas", "Replicas the policy asked for", LABELS)
BROKER_REACHABLE = Gauge("taskq_operator_broker_reachable", "1 when the last broker read worked", LABELS)
SCALINGS = Counter("taskq_operator_scalings_total", "Deployment replica changes, by reason", (*LABELS, "reason"))
TICK_SECONDS = Histogram(
    "taskq_operator_tick_seconds",
    "Duration of one scaler pass over all due TaskQueues",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ERRORS = Counter("taskq_operator_errors_total", "Failed reads or writes, by kind", ("kind",))
TASKQUEUE_TICKS = Counter("taskq_operator_taskqueue_ticks", "TaskQueues observed and decided, summed over the scaler's passes")


@dataclass
class QueueGauges:
    """The per-TaskQueue gauge children, looked up once (label lookups are the costly part).

    `record` sets them only when a value changed (each set takes the gauge's lock): most TaskQueues
    are idle, and their figures stay the same tick after tick.
    """

    ready: Gauge
    unacked: Gauge
    desired: Gauge
    reachable: Gauge
    last: tuple[int | None, int | None, int] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, namespace: str, name: str) -> QueueGauges:
        return cls(
            BACKLOG_READY.labels(namespace, name),
            BACKLOG_UNACKED.labels(namespace, name),
            DESIRED_REPLICAS.labels(namespace, name),
            BROKER_REACHABLE.labels(namespace, name),
        )

    def record(self, ready: int | None, unacked: int | None, desired: int) -> None:
        if (ready, unacked, desired) == self.last:
            return
        self.last = (ready, unacked, desired)
        self.reachable.set(0 if ready is None else 1)
        if ready is not None and unacked is not None:
            self.ready.set(ready)
            self.unacked.set(unacked)
        self.desired.set(desired)


def forget(namespace: str, name: str) -> None:
    for gauge in (BACKLOG_READY, BACKLOG_UNACKED, DESIRED_REPLICAS, BROKER_REACHABLE):
        with contextlib.suppress(KeyError):  # never recorded
            gauge.remove(namespace, name)


def start_metrics_server(port: int, address: str = "0.0.0.0") -> None:
    """Serve `/metrics` on `port` in a background thread (0 disables)."""
    if port:
        start_http_server(port, addr=address)
