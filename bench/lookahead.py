"""`make bench-lookahead`: how much prefetch look-ahead a worker needs, measured on short tasks.

One `taskq-worker` (process pool, 2 slots) drains the same batch of 20 ms `sleep` tasks with
prefetch = slots + 0, 1, 2 (the default: one per slot) and 6 (four per slot). With no look-ahead a slot
idles after each task for the group commit, the ack and the next delivery; the figure is the
drain rate against the ideal `slots / task length`. Results: `bench/results/lookahead.json`.
Services come from `AMQP_URL` / `MONGODB_URI` or are started privately (`taskq_dev.services`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from taskq.client import Client
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll
from taskq_dev.processes import stop_process
from taskq_dev.services import session_services

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "lookahead.json"
SLOTS = 2
TASK_S = 0.02
TASKS = 600
LOOKAHEADS = (0, 1, 2, 6)


def drain_rate(amqp_url: str, mongodb_uri: str, prefetch: int, log_dir: Path) -> float:
    """Tasks/s of one worker with `prefetch` over `TASKS` pre-published tasks (first to last completion)."""
    queue, database = f"la-{uuid.uuid4().hex[:6]}", f"la_{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    with Client(settings) as client:
        client.submit_many({"name": "sleep", "args": [TASK_S]} for _ in range(TASKS))
    env = {
        **os.environ,
        "TASKQ_AMQP_URL": amqp_url,
        "TASKQ_MONGODB_URI": mongodb_uri,
        "TASKQ_DATABASE": database,
        "TASKQ_QUEUE": queue,
        "TASKQ_TASK_MODULES": "taskq.examples",
        "TASKQ_CONCURRENCY": str(SLOTS),
        "TASKQ_PREFETCH": str(prefetch),
        "TASKQ_HEALTH_PORT": "0",
    }
    store = TaskStore(mongodb_uri, database)
    with open(log_dir / f"lookahead-{prefetch}.log", "wb") as log:
        worker = subprocess.Popen(["taskq-worker", "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            poll(lambda: store.tasks.count_documents({"state": "succeeded"}) > 0, timeout=120, interval=0.05, what="the first task")
            started = time.perf_counter()
            first = store.tasks.count_documents({"state": "succeeded"})
            poll(lambda: store.tasks.count_documents({"state": "succeeded"}) == TASKS, timeout=600, interval=0.1, what="the drain")
            return (TASKS - first) / (time.perf_counter() - started)
        finally:
            stop_process(worker, 20)
            store.tasks.database.client.drop_database(database)
            store.close()


def main() -> None:
    services = session_services()
    try:
        amqp_url, mongodb_uri = services.ensure_rabbitmq().amqp_url, services.ensure_mongo().uri
        ideal = SLOTS / TASK_S
        rates = {f"lookahead_{la}": round(drain_rate(amqp_url, mongodb_uri, SLOTS + la, RESULTS.parent), 1) for la in LOOKAHEADS}
    finally:
        services.close()
    result = {
        "tasks_per_s": rates,
        "of_ideal": {key: round(rate / ideal, 3) for key, rate in rates.items()},
        "ideal_tps": ideal,
        "setup": {"slots": SLOTS, "task_s": TASK_S, "tasks": TASKS, "pool": "process", "default_lookahead": SLOTS},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_at_end": list(os.getloadavg())},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
