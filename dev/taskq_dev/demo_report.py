"""The numbers and the plot at the end of `make demo`: throughput, latency percentiles, peak replicas.

Pure arithmetic over samples the demo collected, plus one matplotlib figure. Called by
`taskq_dev.demo`; the scaling benchmark draws its own plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(documents: Sequence[dict[str, Any]], samples: Sequence[Sample], started: datetime) -> Summary:
    """Summary of a run from its final task documents and the samples of the live view."""
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
    return Summary(
        tasks=len(documents),
        states=states,
        throughput_per_s=len(documents) / drain_s if drain_s > 0 else 0.0,
        latency_p50_s=percentile(latencies, 0.50),
        latency_p95_s=percentile(latencies, 0.95),
        peak_replicas=max((s.replicas for s in samples), default=0),
        drain_s=drain_s,
        first_scale_up_s=first_up,
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
