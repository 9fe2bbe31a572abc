"""`targetWaitSeconds` on real heartbeats: two `taskq-worker` processes run 0.5 s `sleep` tasks, the
operator's own reads (`taskq_operator.observe`: passive declares, heartbeats) feed `core.rates`, and
`decide` sizes the queue from the measured rate.

2 slots per worker and 0.5 s tasks are 4 tasks/s per replica; a host shared with other work runs them
somewhat slower, so the bounds are wide, but a count-based guess (or an estimate off by the busy-slot
correction) would fall outside them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from worker_procs import Services, workers

from taskq.client import Client
from taskq_operator.core import rates
from taskq_operator.core.policy import History, decide
from taskq_operator.core.spec import ScalingSpec, StepRules
from taskq_operator.observe import Observers, Target

pytestmark = pytest.mark.services

TASKS = 120
TASK_S = 0.5
SLOTS = 2


def test_service_rate_from_real_heartbeats_sizes_the_queue(svc: Services, client: Client, rabbitmq: Any, tmp_path: Path) -> None:
    policy = ScalingSpec(
        min_replicas=0,
        max_replicas=50,
        tasks_per_replica=None,
        target_wait_s=5.0,
        slots_per_replica=SLOTS,
        scale_up=StepRules(0, 100, 100),
        scale_down=StepRules(0, 100, 100),
    )
    target = Target(svc.queue, svc.amqp_url, rabbitmq.management_url, svc.mongodb_uri, svc.database)
    observers = Observers()
    state = rates.RateState()
    decisions = []
    try:
        with workers(svc, tmp_path, count=2, concurrency=SLOTS, prefetch=SLOTS, pool="thread"):
            client.submit_many({"name": "sleep", "kwargs": {"seconds": TASK_S}} for _ in range(TASKS))
            started = time.monotonic()
            for _ in range(40):  # one tick a second, at most 40 s
                now = time.monotonic()
                reading = observers.read([target])[(target.broker_key, target.queue)]
                beats = {
                    worker: rates.Beat(at, processed, reading.loads.inflight_by_worker.get(worker, 0))
                    for worker, (at, processed) in reading.loads.beats_by_worker.items()
                }
                observation = reading.observation
                assert observation is not None, reading.error
                state = rates.update(state, beats, observation.backlog, SLOTS, now, observation.publish_rate)
                observed = rates.with_rates(observation, state)
                assert observed is not None
                decision = decide(policy, observed, History(2), now)
                state = rates.scaled_to(state, 2, now)
                decisions.append((observed, decision))
                if state.service_rate is not None and observed.backlog > 20 and now - started > 8:
                    break
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    finally:
        observers.close()

    observed, decision = decisions[-1]
    print(f"after {len(decisions)} ticks: {decision.message}")  # shown with -s: the figures of this run
    assert len(reading.loads.beats_by_worker) == 2, reading.loads
    mu = observed.service_rate
    assert mu is not None and 2.0 <= mu <= 5.0, (mu, decision.message)  # 4/s per replica, less on a busy host
    # the count is the model's: the smallest that starts the backlog within 5 s at that rate
    need = observed.backlog / (SLOTS + mu * 5.0)
    assert decision.recommendation is not None and need <= decision.recommendation < need + 1, decision.message
    assert f"service {mu:.2f}/s per replica" in decision.message and "expected wait" in decision.message
