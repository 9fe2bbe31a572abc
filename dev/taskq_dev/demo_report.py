"""The numbers and the plot at the end of `make demo`: throughput, latency percentiles, peak replicas,
and the drain time against the ideal one (`drain_efficiency`).

Pure arithmetic over samples the demo collected, plus one matplotlib figure. Called by
`taskq_dev.demo`; the scaling benchmark draws its own plot and reuses `drain_efficiency`,
`task_seconds` and `pod_start_seconds` for its drain figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One tick of the live view: seconds since submission began, and what was read then."""

    t: float
    ready: int
    unacked: int
    desired: int
    replicas: int
    ready_replicas: int
    final: int


@dataclass(frozen=True)
class Summary:
    """What the demo prints at the end."""

    tasks: int
    states: dict[str, int]
    throughput_per_s: float
    latency_p50_s: float
    latency_p95_s: float
    peak_replicas: int
    drain_s: float
    first_scale_up_s: float | None
    efficiency: Efficiency | None = None
    """The drain against the ideal (None: the TaskQueue's slots or the pods' start were not known)."""


EFFICIENCY_TARGET = 1.25
"""The demo's drain should take at most this many times the ideal drain time."""


@dataclass(frozen=True)
class Efficiency:
    """A drain against the ideal: all task-seconds spread over every slot at once, after one pod start.

    ideal_s = task_seconds / (max_replicas x concurrency) + pod_start_s; ratio = drain_s / ideal_s.
    """

    task_seconds: float
    slots: int
    pod_start_s: float
    ideal_s: float
    drain_s: float
    ratio: float

    @property
    def met(self) -> bool:
        return self.ratio <= EFFICIENCY_TARGET


def drain_efficiency(
    task_seconds: float, max_replicas: int, concurrency: int, pod_start_s: float, drain_s: float
) -> Efficiency:
    """The drain time `drain_s` against the ideal for `task_seconds` of work on `max_replicas` x `concurrency` slots."""
    slots = max(1, max_replicas) * max(1, concurrency)
    ideal = task_seconds / slots + max(0.0, pod_start_s)
    return Efficiency(
        task_seconds=task_seconds,
        slots=slots,
        pod_start_s=max(0.0, pod_start_s),
        ideal_s=ideal,
        drain_s=drain_s,
        ratio=drain_s / ideal if ideal > 0 else math.inf,
    )


def task_seconds(documents: Sequence[dict[str, Any]]) -> float:
    """The seconds the tasks ran: from `timestamps.running` to their final state's timestamp, summed."""
    total = 0.0
    for doc in documents:
        stamps = doc.get("timestamps") or {}
        began, ended = stamps.get("running"), stamps.get(doc.get("state"))
        if began is not None and ended is not None and ended >= began:
            total += (ended - began).total_seconds()
    return total


def pod_start_seconds(documents: Sequence[dict[str, Any]], pods_created: Mapping[str, datetime]) -> float | None:
    """The median time from a pod's creation to the first task it started (None: no pod ran a task).

    `pods_created` maps pod names (the workers' ids in the task documents) to their creationTimestamp;
    this covers scheduling, the process start, connecting and the first fetch.
    """
    first: dict[str, datetime] = {}
    for doc in documents:
        worker, began = doc.get("worker"), (doc.get("timestamps") or {}).get("running")
        if worker in pods_created and began is not None and (worker not in first or began < first[worker]):
            first[worker] = began
    starts = [(began - pods_created[worker]).total_seconds() for worker, began in first.items()]
    return statistics.median(starts) if starts else None


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(
    documents: Sequence[dict[str, Any]],
    samples: Sequence[Sample],
    started: datetime,
    *,
    max_replicas: int | None = None,
    concurrency: int | None = None,
    pods_created: Mapping[str, datetime] | None = None,
) -> Summary:
    """Summary of a run from its final task documents and the samples of the live view.

    With the TaskQueue's `max_replicas` and `concurrency` and the worker pods' creation times, it also
    rates the drain against the ideal (`drain_efficiency`).
    """
    states: dict[str, int] = {}
    latencies: list[float] = []
    last_finish = started
    for doc in documents:
        states[doc["state"]] = states.get(doc["state"], 0) + 1
        stamps = doc.get("timestamps") or {}
        finished = stamps.get(doc["state"])
        if finished is not None and doc.get("created_at") is not None:
            latencies.append((finished - doc["created_at"]).total_seconds())
            last_finish = max(last_finish, finished)
    drain_s = (last_finish - started).total_seconds()
    first_up = next((s.t for s in samples if s.desired > 0), None)
    efficiency = None
    pod_start = pod_start_seconds(documents, pods_created or {})
    if max_replicas and concurrency and pod_start is not None:
        efficiency = drain_efficiency(task_seconds(documents), max_replicas, concurrency, pod_start, drain_s)
    return Summary(
        tasks=len(documents),
        states=states,
        throughput_per_s=len(documents) / drain_s if drain_s > 0 else 0.0,
        latency_p50_s=percentile(latencies, 0.50),
        latency_p95_s=percentile(latencies, 0.95),
        peak_replicas=max((s.replicas for s in samples), default=0),
        drain_s=drain_s,
        first_scale_up_s=first_up,
        efficiency=efficiency,
    )


def plot(samples: Sequence[Sample], path: Path, title: str) -> Path:
    """Backlog (ready + unacked) against desired and ready replicas over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    fig, backlog_axis = plt.subplots(figsize=(9, 4.5), dpi=110)
    backlog_axis.fill_between(t, [s.ready + s.unacked for s in samples], step="post", alpha=0.25, label="backlog (ready + unacked)")
    backlog_axis.plot(t, [s.ready for s in samples], drawstyle="steps-post", linewidth=1, label="ready")
    backlog_axis.set_xlabel("seconds since submission began")
    backlog_axis.set_ylabel("messages")
    replica_axis = backlog_axis.twinx()
    replica_axis.plot(t, [s.desired for s in samples], drawstyle="steps-post", color="tab:red", label="desired replicas")
    replica_axis.plot(t, [s.ready_replicas for s in samples], drawstyle="steps-post", color="tab:green", linestyle="--", label="ready replicas")
    replica_axis.set_ylabel("replicas")
    replica_axis.set_ylim(bottom=0)
    handles = backlog_axis.get_legend_handles_labels()[0] + replica_axis.get_legend_handles_labels()[0]
    labels = backlog_axis.get_legend_handles_labels()[1] + replica_axis.get_legend_handles_labels()[1]
    backlog_axis.legend(handles, labels, loc="upper right", fontsize=8)
    backlog_axis.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
