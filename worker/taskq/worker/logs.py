"""Structured logs for the worker: one JSON object per line on stderr.

`taskq.worker.main` makes one `JsonLog` and hands it to every stage, which log through
`JsonLog.event`; fields are flat (`ts`, `level`, `event`, `worker`, then whatever the event carries:
`task_id`, `name`, `attempt`, `duration_ms`, ...). URLs are never passed in raw: callers log hosts
through `taskq.errors.redact_url`.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLog:
    """A thread-safe JSON-lines writer with a level threshold."""

    def __init__(self, stream: IO[str] | None = None, *, worker: str = "", level: str = "info") -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self.worker = worker
        self.threshold = LEVELS.get(level.lower(), 20)

    def enabled(self, level: str) -> bool:
        return LEVELS.get(level, 20) >= self.threshold

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        """Write one line for `event` (dropped when below the threshold)."""
        if not self.enabled(level):
            return
        record: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
            "worker": self.worker,
        }
        record.update(fields)
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken log stream must never stop the worker
