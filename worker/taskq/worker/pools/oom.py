"""How often the kernel's OOM killer has acted in this process's memory cgroup (the container's).

The process pool reads it when a child dies of a SIGKILL it did not send: if the count went up, the
task's `WorkerLost` error says that the container's memory limit killed the child, instead of leaving
the user to guess from "killed by signal SIGKILL". Both cgroup versions count it (`oom_kill` in v2's
`memory.events`, and in v1's `memory.oom_control` since Linux 4.13); None where neither is readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CGROUP_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
OOM_NOTE = "the kernel's OOM killer acted in this container (its memory limit was reached)"


def oom_kills(paths: Sequence[str] = CGROUP_FILES) -> int | None:
    """The cgroup's `oom_kill` count, from the first of `paths` that has one."""
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


class OomWatch:
    """Tells whether the OOM killer acted since the last look (one per pool; a race only blurs attribution)."""

    def __init__(self, paths: Sequence[str] = CGROUP_FILES) -> None:
        self._paths = paths
        self._seen = oom_kills(paths)

    def acted(self) -> bool:
        now = oom_kills(self._paths)
        before, self._seen = self._seen, now
        return now is not None and before is not None and now > before
