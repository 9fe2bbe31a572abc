"""The worker's HTTP endpoints: `/livez`, `/readyz` and `/metrics` (Prometheus text format).

Served from a daemon thread by `taskq.worker.main`; the checks are callables so this module knows
nothing about the consumer or the store. Port 0 picks a free port (the chosen one is logged).
"""

from __future__ import annotations

from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from taskq.core.outcomes import Decision


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of their own."""

    def __init__(self, inflight: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.outcomes = Counter(
            "taskq_tasks_total", "Task attempts recorded, by outcome event.", ["outcome"], registry=self.registry
        )
        self.durations = Histogram(
            "taskq_task_duration_seconds",
            "Wall time of task attempts.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300),
            registry=self.registry,
        )
        self.inflight = Gauge("taskq_inflight", "Deliveries held unacked by this worker.", registry=self.registry)
        self.inflight.set_function(inflight)
        self.group_commits = Gauge(
            "taskq_group_commits", "Store flushes (group commits) since the worker started.", registry=self.registry
        )

    def count_group_commits(self, flushes: Callable[[], float]) -> None:
        """Report the committer's flush count (tasks recorded / group commits = the mean batch)."""
        self.group_commits.set_function(flushes)

    def recorded(self, decision: Decision) -> None:
        """Count one recorded outcome (called by the committer after the flush)."""
        self.outcomes.labels(decision.event.removeprefix("task.").removeprefix("message.")).inc()
        duration_ms = decision.fields.get("duration_ms")
        if isinstance(duration_ms, (int, float)):
            self.durations.observe(duration_ms / 1000)


class HealthServer:
    """A tiny threaded HTTP server for probes and scraping."""

    def __init__(
        self, port: int, *, alive: Callable[[], bool], ready: Callable[[], bool], metrics: WorkerMetrics, host: str = "0.0.0.0"
    ) -> None:
        checks = {"/livez": alive, "/readyz": ready}
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                path = self.path.split("?", 1)[0]
                if path in checks:
                    ok = checks[path]()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not ok\n", "text/plain")
                elif path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
                return  # probes every few seconds would flood the JSON log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])

    def serve(self) -> None:
        """Serve requests until `stop` (run by the supervisor in its own thread)."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
