"""Processes the harness starts, and the one way it stops them: SIGTERM, a bounded wait, then SIGKILL.

`BackgroundProcess` is a server started in its own session so it can outlive the starting command
(`taskq_dev.rabbitmq`, `taskq_dev.mongo`); a handle can be rebuilt from its recorded pid and start
time (`taskq-dev services down` in a later command), and the start time guards against signalling a
recycled pid. `stop_processes` / `stop_process` stop child processes this command started
(`subprocess.Popen`: the operator in tests and benchmarks, demo and benchmark workers), all drained in
parallel within one deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    return raw[raw.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _send(process: subprocess.Popen[Any], signum: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited just now
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)


def stop_processes(
    processes: Sequence[subprocess.Popen[Any]], grace_s: float, *, group: bool = False
) -> list[int | None]:
    """SIGTERM every running process, wait up to `grace_s` seconds for all, SIGKILL the rest; exit codes.

    `group=True` signals each process's whole process group (for children started with
    `start_new_session=True`). A process that had to be killed reports None.
    """
    for process in processes:
        if process.poll() is None:
            _send(process, signal.SIGTERM, group)
    deadline = time.monotonic() + grace_s
    codes: list[int | None] = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            _send(process, signal.SIGKILL, group)
            process.wait(timeout=10)
            codes.append(None)
    return codes


def stop_process(process: subprocess.Popen[Any], grace_s: float, *, group: bool = False) -> int | None:
    """`stop_processes` for one process."""
    return stop_processes([process], grace_s, group=group)[0]


@dataclass
class BackgroundProcess:
    """One server process: its command line, environment, log file, and (once started) its pid."""

    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    pid: int | None = None
    start_ticks: int | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> int:
        """Start the process (detached from our session and terminal); return its pid."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        self.pid = self._popen.pid
        self.start_ticks = process_start_ticks(self.pid)
        return self.pid

    def alive(self) -> bool:
        """Whether the process we started still runs (a zombie or a recycled pid counts as gone)."""
        if self.pid is None:
            return False
        if self._popen is not None:
            return self._popen.poll() is None
        fields = _stat_fields(self.pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return self.start_ticks is None or int(fields[19]) == self.start_ticks

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the process to exit; return whether it did."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def signal(self, signum: int) -> None:
        """Send `signum` to the process if it is still ours and running."""
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):  # it exited just now
                os.kill(self.pid, signum)

    def terminate(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL; returns once the process is gone."""
        self.signal(signal.SIGTERM)
        if not self.wait_exit(timeout):
            self.signal(signal.SIGKILL)
            self.wait_exit(5.0)
        self._popen = None
        self.pid = None
        self.start_ticks = None

    def log_tail(self, lines: int = 15) -> str:
        """The last `lines` lines of the process log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def record(self) -> dict[str, int | None]:
        """What a later command needs to find this process again."""
        return {"pid": self.pid, "start_ticks": self.start_ticks}

    def adopt(self, record: Mapping[str, int | None]) -> None:
        """Take over a process recorded by `record()` in another command."""
        self.pid = record.get("pid")
        self.start_ticks = record.get("start_ticks")
        self._popen = None
