"""`taskq-operator` as a local subprocess, for the operator's cluster tests and the scaling benchmark.

Starts it for one namespace (health and metrics on free ports), waits for its start-up line, and
stops it (SIGTERM, then SIGKILL after a bounded wait) however the block ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from taskq_dev.ports import wait_until
from taskq_dev.processes import stop_process

STARTED_LINE = b"taskq operator started"


@contextmanager
def running_operator(
    namespace: str,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    start_timeout: float = 60.0,
    stop_timeout: float = 20.0,
    metrics_port: int = 0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `taskq-operator --namespace NAMESPACE`, output to `log_path`; yield the process.

    `metrics_port` serves its Prometheus `/metrics` there (0: off, the default).
    """
    environment = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskq_operator.main", "--namespace", namespace,
             "--metrics-port", str(metrics_port), "--health-port", "0"],
            env=environment, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: STARTED_LINE in log_path.read_bytes(), timeout=start_timeout, what="the operator to start")
        yield process
    finally:
        stop_process(process, stop_timeout)
