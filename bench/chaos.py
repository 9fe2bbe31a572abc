"""`make chaos`: the chaos run (taskq_dev.chaos) with 10,000 tasks by default -> bench/results/chaos.json.

Starts a private RabbitMQ 4.0 and store (the run restarts the one and stops the other), runs the
tasks through taskq-worker processes under faults, prints the report's headline and writes the
whole report. Exit status 0 when the report passes, 1 when it does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from taskq_dev.chaos import ChaosPlan, private_services, run
from taskq_dev.services import session_services

RESULTS = Path(__file__).parent / "results" / "chaos.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, default=None, help="keep the ledger and worker logs in this folder")
    args = parser.parse_args()
    plan = dataclasses.replace(ChaosPlan(), tasks=args.tasks, workers=args.workers, concurrency=args.concurrency, seed=args.seed)
    # Larger runs take longer to drain, and a read of every task costs the store more: sample less often.
    plan = dataclasses.replace(
        plan, settle_timeout_s=max(plan.settle_timeout_s, args.tasks * 0.1), sample_interval_s=max(0.5, args.tasks / 4000)
    )
    services = session_services()
    try:
        with tempfile.TemporaryDirectory(prefix="taskq-chaos-") as scratch:
            work_dir = args.keep or Path(scratch)
            report = run(plan, private_services(services), work_dir, log=lambda line: print(line, flush=True))
    finally:
        services.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    headline = {key: report[key] for key in ("tasks", "final", "lost", "stuck", "regressions", "pass", "wall_s", "executions")}
    headline["duplicates"] = {k: report["duplicates"][k] for k in ("count", "unexplained", "by_cause")}
    print(json.dumps(headline, indent=2))
    print(f"report: {args.out}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
