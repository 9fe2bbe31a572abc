"""`taskq-operator`: run the TaskQueue operator (kopf) with its metrics and health endpoints.

Deployed as one replica (Deployment strategy Recreate; kopf runs standalone), or as 2-5 replicas with
kopf peering when `TASKQ_PEERING` names the peering object (the start-up handler switches it on; the
scaler loop then stands by with kopf's handlers, `taskq_operator.peering`).
Reads `KUBECONFIG` or the pod's service account. The operator's runtime state is one
`taskq_operator.handlers.OperatorState`, handed to kopf as its operator memo. Started through
`taskq_operator.entry` (the console script), which names the missing extra when kopf is absent.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging

import kopf

from taskq_operator import handlers  # registers the handlers with kopf on import
from taskq_operator.liveness import DEFAULT_STALL_AFTER_S, TickHealth
from taskq_operator.metrics import start_metrics_server


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="taskq-operator", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="namespace to watch (repeatable); default: all namespaces"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port (0: off)")
    parser.add_argument(
        "--tick-stall-seconds",
        type=float,
        default=DEFAULT_STALL_AFTER_S,
        help="/healthz fails when no scaler tick completed for this long",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser.parse_args(argv)


GC_THRESHOLD = (10_000, 10, 10)
"""Young-generation threshold 10,000 allocations (Python's default: 700)."""


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the scaler's path.

    Each tick allocates a few dozen objects per TaskQueue; with the default thresholds a young
    collection ran every 700 allocations, promoted what was still alive mid-tick, and that started a
    full collection of the whole heap (the Kubernetes client and kopf, tens of MiB) every other tick:
    about a third of the operator's CPU at 2,000 TaskQueues. The modules loaded at start-up are frozen
    out of every collection; the higher young threshold lets a tick's objects die before they are scanned.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kopf.objects", "pika", "httpx", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    start_metrics_server(args.metrics_port)
    tune_gc()
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    state = handlers.OperatorState(
        health=TickHealth(stall_after_s=args.tick_stall_seconds), named_namespaces=bool(args.namespace)
    )
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=True,
            liveness_endpoint=liveness,
            memo=kopf.Memo({handlers.MEMO_KEY: state}),
        )
    )


if __name__ == "__main__":
    main()
