"""SLO scaling benchmark: `tasksPerReplica` vs `targetWaitSeconds` when task lengths change mid-run.

`make bench-slo` (or `python bench/slo.py`) writes bench/results/slo.json; `bench/scaling.py` calls
`run()` and stores the same dict under the key `slo` of scaling.json.

What runs for real and what is simulated: the operator's own pure code decides (`core.policy.decide`
with `remember` for stabilization, `core.rates` for the estimate, fed heartbeats shaped like the
workers' ones: every 2 s per pod, `processed` and `inflight`), one decision per 2 s poll. The queue,
the pods and the tasks are a discrete-time simulation (50 ms steps, seeded): one FIFO queue, pods of 4
slots that serve `POD_START_S` after they are created and, when removed, take no new task and exit
once their running tasks end (idle pods are removed first, as the pod-deletion cost does); the
publish rate is the arrivals of the last 5 s, refreshed every 5 s (RabbitMQ's statistics interval).
A cluster run of the same policies would measure the same decisions against slower, noisier pods; this
one isolates the policy.

The workload: Poisson arrivals at `ARRIVALS_PER_S`, plus two bursts of short tasks; task lengths
uniform in [0.5, 1.5] x the mean, the mean `SHORT_S` for the first half and 20x that after.
Measured per policy: each task's wait (start - arrival), p50/p95/max per phase and overall, and the
replica-seconds paid (pods from creation to exit).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskq_operator.core import rates
from taskq_operator.core.policy import History, Observation, decide, remember
from taskq_operator.core.spec import ScalingSpec, StepRules

RESULTS = Path(__file__).resolve().parent / "results"
STEP_S = 0.05
POLL_S = 2.0
HEARTBEAT_S = 2.0
HEARTBEAT_FRESH_S = 8.0
POD_START_S = 5.0
SLOTS = 4
DURATION_S = 900.0
SWITCH_S = 300.0
SHORT_S = 0.25
LONG_FACTOR = 20
ARRIVALS_PER_S = 6.0
BURSTS = ((60.0, 600), (180.0, 600))
"""(time, tasks): bursts of short tasks in the first phase."""
TARGET_WAIT_S = 10.0
MAX_REPLICAS = 40
STATS_INTERVAL_S = 5.0


@dataclass
class Pod:
    name: str
    created: float
    serving_at: float
    beat_phase: float
    ends: list[float] = field(default_factory=list)
    processed: int = 0
    draining: bool = False
    exited: float | None = None
    beat: rates.Beat | None = None
    next_beat: float = 0.0


def workload(seed: int) -> list[tuple[float, float]]:
    """(arrival time, service time) of every task, sorted by arrival."""
    rng = random.Random(seed)
    tasks: list[tuple[float, float]] = []

    def length(at: float) -> float:
        mean = SHORT_S if at < SWITCH_S else SHORT_S * LONG_FACTOR
        return mean * rng.uniform(0.5, 1.5)

    at = 0.0
    while True:
        at += rng.expovariate(ARRIVALS_PER_S)
        if at >= DURATION_S:
            break
        tasks.append((at, length(at)))
    for when, count in BURSTS:
        tasks.extend((when, length(when)) for _ in range(count))
    tasks.sort()
    return tasks


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _summary(waits: list[float]) -> dict[str, Any]:
    return {
        "tasks": len(waits),
        "p50_wait_s": round(_percentile(waits, 0.50), 2),
        "p95_wait_s": round(_percentile(waits, 0.95), 2),
        "max_wait_s": round(max(waits, default=0.0), 2),
        "over_target": round(sum(w > TARGET_WAIT_S for w in waits) / max(1, len(waits)), 4),
    }


def simulate(policy: ScalingSpec, seed: int) -> dict[str, Any]:
    """Run the workload under `policy`; waits, replica-seconds and a sampled timeline."""
    rng = random.Random(seed + 1)
    tasks = workload(seed)
    queue: list[tuple[float, float]] = []
    head = 0  # index of the next waiting task in `queue`
    pods: list[Pod] = []
    waits: list[tuple[float, float]] = []  # (arrival, wait)
    history = History(0)
    state = rates.RateState()
    keep = max(policy.scale_up.stabilization_window_s, policy.scale_down.stabilization_window_s)
    replicas = 0
    next_task = 0
    next_poll = 0.0
    publish_rate: float | None = None
    next_stats = STATS_INTERVAL_S
    arrived_in_stats = 0
    timeline: list[dict[str, Any]] = []
    messages: list[str] = []
    made = 0
    steps = int(DURATION_S * 1.5 / STEP_S)  # after the last arrival, run on until the queue drains (bounded)
    for step in range(steps):
        now = step * STEP_S
        while next_task < len(tasks) and tasks[next_task][0] <= now:
            queue.append(tasks[next_task])
            next_task += 1
            arrived_in_stats += 1
        if now >= next_stats:
            publish_rate = arrived_in_stats / STATS_INTERVAL_S
            arrived_in_stats = 0
            next_stats += STATS_INTERVAL_S
        for pod in pods:
            if pod.exited is not None:
                continue
            done = [end for end in pod.ends if end <= now]
            if done:
                pod.processed += len(done)
                pod.ends = [end for end in pod.ends if end > now]
            if pod.draining and not pod.ends:
                pod.exited = now
                continue
            if now >= pod.serving_at and not pod.draining:
                while len(pod.ends) < SLOTS and head < len(queue):
                    arrival, service = queue[head]
                    head += 1
                    waits.append((arrival, now - arrival))
                    pod.ends.append(now + service)
                if now >= pod.next_beat:
                    pod.beat = rates.Beat(now, pod.processed, len(pod.ends))
                    pod.next_beat = now + HEARTBEAT_S
        if now >= next_poll:
            next_poll += POLL_S
            live = {p.name: p.beat for p in pods if p.exited is None and p.beat and now - p.beat.at <= HEARTBEAT_FRESH_S}
            beats = {name: beat for name, beat in live.items() if beat is not None}
            inflight = sum(len(p.ends) for p in pods if p.exited is None)
            observation = Observation(ready=len(queue) - head, unacked=inflight, consumers=len(beats), publish_rate=publish_rate)
            if policy.target_wait_s is not None:
                state = rates.update(state, beats, observation.backlog, SLOTS, now, publish_rate)
                observed = rates.with_rates(observation, state)
                assert observed is not None
                observation = observed
            history = History(replicas, history.recommendations)
            decision = decide(policy, observation, history, now)
            history = remember(history, now, decision.recommendation, keep)
            if policy.target_wait_s is not None:
                state = rates.scaled_to(state, decision.replicas, now)
            if decision.replicas != replicas:
                messages.append(f"t={now:.0f}s {decision.reason} {replicas}->{decision.replicas}: {decision.message}")
            active = [p for p in pods if p.exited is None and not p.draining]
            for _ in range(decision.replicas - len(active)):
                phase = rng.uniform(0, HEARTBEAT_S)
                pods.append(Pod(f"pod-{made}", now, now + POD_START_S, phase, next_beat=now + POD_START_S + phase))
                made += 1
            if decision.replicas < len(active):
                victims = sorted(active, key=lambda p: (now >= p.serving_at, len(p.ends)))
                for pod in victims[: len(active) - decision.replicas]:
                    pod.draining = True
            replicas = decision.replicas
            if int(now) % 10 == 0:
                timeline.append({"t": round(now), "backlog": observation.backlog, "replicas": replicas})
        if next_task >= len(tasks) and head >= len(queue) and all(not p.ends for p in pods) and now > DURATION_S:
            break
    end = now
    replica_s = sum(((p.exited if p.exited is not None else end) - p.created) for p in pods)
    first = [w for a, w in waits if a < SWITCH_S]
    second = [w for a, w in waits if a >= SWITCH_S]
    return {
        "overall": _summary([w for _, w in waits]),
        "short_phase": _summary(first),
        "long_phase": _summary(second),
        "unstarted": len(queue) - head,
        "replica_seconds": round(replica_s),
        "peak_replicas": max((t["replicas"] for t in timeline), default=0),
        "timeline_every_10s": timeline,
        "decisions_first": messages[:6],
        "decisions_after_switch": [m for m in messages if SWITCH_S <= float(m[2:].split("s", 1)[0]) < SWITCH_S + 60][:8],
        "decisions_last": messages[-3:],
    }


def policies() -> dict[str, ScalingSpec]:
    """The compared settings: the same bounds and windows, only the sizing rule differs."""
    base = {
        "min_replicas": 0,
        "max_replicas": MAX_REPLICAS,
        "slots_per_replica": SLOTS,
        "scale_up": StepRules(0, 4, 100),
        "scale_down": StepRules(60, 4, 100),
    }
    return {
        "tasksPerReplica=50": ScalingSpec(tasks_per_replica=50, **base),  # type: ignore[arg-type]
        "tasksPerReplica=10": ScalingSpec(tasks_per_replica=10, **base),  # type: ignore[arg-type]
        "tasksPerReplica=5": ScalingSpec(tasks_per_replica=5, **base),  # type: ignore[arg-type]
        f"targetWaitSeconds={TARGET_WAIT_S:g}": ScalingSpec(  # type: ignore[arg-type]
            tasks_per_replica=None, target_wait_s=TARGET_WAIT_S, **base
        ),
    }


def run(seed: int = 7) -> dict[str, Any]:
    """The benchmark's result dict (what slo.json holds and scaling.json stores under `slo`)."""
    results = {name: simulate(policy, seed) for name, policy in policies().items()}
    return {
        "what": "tasksPerReplica vs targetWaitSeconds on a workload whose task lengths grow 20x mid-run",
        "method": "operator's pure policy and rate estimator driven by a discrete-time queue/pod simulation "
        "(bench/slo.py docstring); not a cluster run",
        "workload": {
            "duration_s": DURATION_S,
            "arrivals_per_s": ARRIVALS_PER_S,
            "bursts": [{"at_s": at, "tasks": n} for at, n in BURSTS],
            "short_task_s": SHORT_S,
            "long_task_s": SHORT_S * LONG_FACTOR,
            "switch_at_s": SWITCH_S,
            "slots_per_replica": SLOTS,
            "pod_start_s": POD_START_S,
            "poll_s": POLL_S,
            "max_replicas": MAX_REPLICAS,
            "scale_down_window_s": 60,
            "seed": seed,
        },
        "target_wait_s": TARGET_WAIT_S,
        "policies": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "slo.json")
    args = parser.parse_args(argv)
    result = run(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in result["policies"].items():
        print(
            f"{name:24} p95 wait {figures['overall']['p95_wait_s']:7.2f} s (short {figures['short_phase']['p95_wait_s']:.2f}, "
            f"long {figures['long_phase']['p95_wait_s']:.2f}), replica-seconds {figures['replica_seconds']}, "
            f"peak {figures['peak_replicas']}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
