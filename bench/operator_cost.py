"""The operator's own cost at many TaskQueues, written to bench/results/operator-cost.json.

Run as `python bench/scaling.py --operator-cost-only` (or this file) against a control plane
(KUBECONFIG from `taskq-dev cluster up`) and RabbitMQ/store on loopback (AMQP_URL / MONGODB_URI, or
private ones started here). One operator process, idle TaskQueues at a 2 s poll, grown step by step
(default 500, then 2,000): for each step the scaling benchmark's `load_cost` creates the TaskQueues,
lets them settle and measures CPU (% of one core) and RSS over a steady window; alongside, the operator's
/metrics give scaler passes and TaskQueue ticks per second and the mean pass time. With
`--profile-seconds` a py-spy profile (GIL holder only) of the same process follows each window, with
CPU per thread name and the frames that dominate (`bench/results/operator-cost-<count>.collapsed.txt`).
Fold into scaling.json: its `operator_cpu_pct`/`operator_rss_mb`/`taskqueues` are this file's
`steps[-1]` figures (`cpu_pct`, `rss_mb`, `taskqueues`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from taskq_dev.operator_process import running_operator
from taskq_dev.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scaling  # noqa: E402  (bench/ is not a package)
from cpu import cpu_by_thread_name, profile_parent, thread_cpu, thread_names  # noqa: E402

RESULTS = scaling.RESULTS
OUT = RESULTS / "operator-cost.json"
METRIC = re.compile(r"^(taskq_operator_tick_seconds_(?:count|sum)|taskq_operator_taskqueue_ticks_total) ([0-9.e+-]+)$")


def log(message: str) -> None:
    print(f"[operator-cost {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


SCRAPE_EVERY_S = 30.0
"""As often as a Prometheus would scrape: /metrics with 2,000 TaskQueues (8,000 series) costs the operator
tens of ms of CPU per scrape, which a scrape every second made half of the profile's samples."""


class MetricsSampler:
    """Reads the operator's tick counters every `interval_s`, so a window's rates can be taken afterwards."""

    def __init__(self, port: int, interval_s: float = SCRAPE_EVERY_S) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)

    def __enter__(self) -> MetricsSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.wait(self.interval_s):
                try:
                    text = client.get(self.url).text
                except httpx.HTTPError:
                    continue
                values = {m.group(1): float(m.group(2)) for m in map(METRIC.match, text.splitlines()) if m}
                self.samples.append((time.monotonic(), values))

    def rates(self, since: float, until: float) -> dict[str, float | None]:
        """Scaler passes/s, TaskQueue ticks/s and mean pass seconds between two moments."""
        inside = [(t, v) for t, v in self.samples if since <= t <= until]
        if len(inside) < 2:
            return {"scaler_passes_per_s": None, "taskqueue_ticks_per_s": None, "mean_pass_s": None}
        (t0, first), (t1, last) = inside[0], inside[-1]

        def delta(name: str) -> float:
            return last.get(name, 0.0) - first.get(name, 0.0)

        passes = delta("taskq_operator_tick_seconds_count")
        return {
            "scaler_passes_per_s": round(passes / (t1 - t0), 3),
            "taskqueue_ticks_per_s": round(delta("taskq_operator_taskqueue_ticks_total") / (t1 - t0), 1)
            if "taskq_operator_taskqueue_ticks_total" in last
            else None,
            "mean_pass_s": round(delta("taskq_operator_tick_seconds_sum") / passes, 4) if passes else None,
        }


def top_frames(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Own (leaf) and inclusive shares of the profile's samples, by function."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        count = int(count_text)
        total += count
        leaf[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "leaf": {name: round(n / total, 3) for name, n in leaf.most_common(top)},
        "inclusive": {name: round(n / total, 3) for name, n in inclusive.most_common(top * 2)},
    }


def profile(pid: int, count: int, seconds: int, label: str = "") -> dict[str, Any]:
    out = RESULTS / f"operator-cost-{label + '-' if label else ''}{count}.collapsed.txt"
    names = thread_names(pid)
    before = thread_cpu(pid)
    done = profile_parent(pid, seconds, out, rate=100)
    after = thread_cpu(pid)
    if done is None or not out.exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    by_thread = {name: round((u + s) / seconds * 100, 2) for name, (u, s) in cpu_by_thread_name(before, after, names).items()}
    return {
        "seconds": seconds,
        "cpu_pct_by_thread": dict(list(by_thread.items())[:8]),
        "frames": top_frames(out),
        "collapsed": str(out.relative_to(RESULTS.parent.parent)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", default="500,2000", help="TaskQueue counts, ascending (each step adds to the last)")
    parser.add_argument("--cpu-window", type=float, default=60.0)
    parser.add_argument("--profile-seconds", type=int, default=0, help="py-spy each step after its window (0: no)")
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--operator-path", help="run the operator from this source folder (PYTHONPATH), e.g. an older commit's")
    parser.add_argument("--label", default="", help="prefix of the profile files (e.g. 'before')")
    args, _ = parser.parse_known_args(argv)
    steps = [int(part) for part in args.steps.split(",") if part]
    warnings.filterwarnings("ignore", message="Unverified HTTPS request")

    kubectl = scaling.Kubectl()
    namespace = f"tq-cost-{uuid.uuid4().hex[:6]}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    kubectl("apply", "-f", str(scaling.CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    kubectl("create", "namespace", namespace)
    server_version = json.loads(kubectl("get", "--raw", "/version")).get("gitVersion")
    results: list[dict[str, Any]] = []
    try:
        with scaling.services() as (amqp_url, management_url, mongodb_uri):
            items = [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "bench-broker", "namespace": namespace},
                    "stringData": {"amqp-url": amqp_url, "management-url": management_url},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "bench-store", "namespace": namespace},
                    "stringData": {"mongodb-uri": mongodb_uri},
                },
                # the two TaskQueues of the scaling benchmark's other parts, which load_cost counts on
                scaling.taskqueue("react", namespace, "bench-react", {"minReplicas": 0}),
                scaling.taskqueue("plot", namespace, "bench-plot", {"minReplicas": 0, "tasksPerReplica": 100}),
            ]
            kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
            port = free_port()
            with (
                running_operator(
                    namespace,
                    RESULTS / f"operator-cost-{args.label or 'run'}-operator.log",
                    metrics_port=port,
                    env={"PYTHONPATH": args.operator_path} if args.operator_path else None,
                ) as process,
                MetricsSampler(port) as sampler,
            ):
                for count in steps:
                    log(f"{count} TaskQueues")
                    cpu_pct, rss = scaling.load_cost(kubectl, namespace, count, process, args.cpu_window)
                    until = time.monotonic()
                    step: dict[str, Any] = {"taskqueues": count, "cpu_pct": round(cpu_pct, 2), "rss_mb": round(rss, 1)}
                    step.update(sampler.rates(until - args.cpu_window, until))
                    log(f"{count} TaskQueues: {step}")
                    if args.profile_seconds > 0:
                        step["profile"] = profile(process.pid, count, args.profile_seconds, args.label)
                    results.append(step)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    report = {
        "operator_path": args.operator_path,
        "steps": results,
        "poll_interval_s": 2,
        "cpu_window_s": args.cpu_window,
        "target": {"taskqueues": 2000, "cpu_pct_max": 10.0},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "kubernetes": server_version,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"written {args.output}")


if __name__ == "__main__":
    main()
