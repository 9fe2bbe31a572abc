"""Counts the store commands a process sends, for `bench/ceiling.py` (loaded through PYTHONPATH, bench only).

When `TASKQ_BENCH_COMMAND_LOG` names a file, a pymongo command listener is registered before any
client exists; per (command, collection, thread name) it counts commands and their statements
(documents inserted, updates, deletes, a find's filter kind) and rewrites `<file>.<pid>` as JSON
every half second: one file per process, since the process pool's forkserver and children inherit
the variable too (the reader sums them). Without the variable it does nothing. Never imported by
taskq itself.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from typing import Any

_PATH = os.environ.get("TASKQ_BENCH_COMMAND_LOG")

if _PATH:
    from pymongo import monitoring

    _counts: Counter[tuple[str, str, str, str]] = Counter()
    _statements: Counter[tuple[str, str, str, str]] = Counter()
    _lock = threading.Lock()
    _STATEMENT_KEYS = {"insert": "documents", "update": "updates", "delete": "deletes"}

    def _shape(command: dict[str, Any]) -> str:
        """The filter kind of a find (by _id, by _id $in, other); the update's upsert flag; else ''."""
        name = next(iter(command))
        if name == "find":
            flt = command.get("filter") or {}
            if set(flt) == {"_id"}:
                return "by _id $in" if isinstance(flt["_id"], dict) else "by _id"
            return "other filter"
        if name == "update":
            updates = command.get("updates") or []
            return "upsert" if updates and updates[0].get("upsert") else ""
        return ""

    class _Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            command = event.command
            name = event.command_name
            collection = command.get(name)
            collection = collection if isinstance(collection, str) else ""
            key = (name, collection, _shape(command), threading.current_thread().name)
            field = _STATEMENT_KEYS.get(name)
            statements = len(command.get(field) or []) if field else 1
            with _lock:
                _counts[key] += 1
                _statements[key] += statements

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    def _dump() -> None:
        with _lock:
            rows = [
                {"command": k[0], "collection": k[1], "shape": k[2], "thread": k[3], "commands": n, "statements": _statements[k]}
                for k, n in sorted(_counts.items())
            ]
        target = f"{_PATH}.{os.getpid()}"
        tmp = f"{target}.tmp"
        with open(tmp, "w") as out:
            json.dump(rows, out)
        os.replace(tmp, target)

    def _loop() -> None:
        while True:
            threading.Event().wait(0.5)
            try:
                _dump()
            except OSError:
                return

    monitoring.register(_Listener())
    threading.Thread(target=_loop, name="bench-command-log", daemon=True).start()
