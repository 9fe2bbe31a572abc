"""`make chaos`: the chaos run (taskq_dev.chaos) with 10,000 tasks by default -> bench/results/chaos.json.

Starts a private RabbitMQ 4.0 and store (the run restarts the one and stops the other), runs the
tasks through taskq-worker processes under faults, prints the report's headline and writes the
whole report. With `--cluster` (`make chaos-cluster`) the workers are the pods of an operator-managed
TaskQueue on the local control plane, and one node is lost too (taskq_dev.chaos_cluster) ->
bench/results/chaos-cluster.json. Exit status 0 when the report passes, 1 when it does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from taskq_dev.chaos import ChaosPlan, private_services, run
from taskq_dev.chaos_cluster import cluster_mode, cluster_plan
from taskq_dev.services import session_services

RESULTS = Path(__file__).parent / "results" / "chaos.json"
CLUSTER_RESULTS = Path(__file__).parent / "results" / "chaos-cluster.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} ({CLUSTER_RESULTS.name} with --cluster)")
    parser.add_argument("--cluster", action="store_true", help="workers as operator-managed pods; a node is lost")
    parser.add_argument("--keep", type=Path, default=None, help="keep the ledger and worker logs in this folder")
    args = parser.parse_args()
    plan = dataclasses.replace(ChaosPlan(), tasks=args.tasks, workers=args.workers, concurrency=args.concurrency, seed=args.seed)
    # Larger runs take longer to drain, and a read of every task costs the store more: sample less often.
    plan = dataclasses.replace(
        plan, settle_timeout_s=max(plan.settle_timeout_s, args.tasks * 0.1), sample_interval_s=max(0.5, args.tasks / 4000)
    )
    out = args.out or (CLUSTER_RESULTS if args.cluster else RESULTS)
    services = session_services()
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        with tempfile.TemporaryDirectory(prefix="taskq-chaos-") as scratch:
            work_dir = args.keep or Path(scratch)
            chaos_services = private_services(services)
            if args.cluster:
                plan = cluster_plan(plan)
                with cluster_mode(chaos_services, work_dir, plan, log=say) as mode:
                    report = run(plan, chaos_services, work_dir, log=say, mode=mode)
            else:
                report = run(plan, chaos_services, work_dir, log=say)
    finally:
        services.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    headline = {key: report[key] for key in ("tasks", "final", "lost", "stuck", "regressions", "pass", "wall_s", "executions")}
    headline["duplicates"] = {k: report["duplicates"][k] for k in ("count", "unexplained", "by_cause")}
    if "node_loss" in report:
        headline["node_loss"] = report["node_loss"]
    print(json.dumps(headline, indent=2))
    print(f"report: {out}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
