"""The worker bridge as a background process: started by `make demo`, stopped by `taskq-dev cluster down`.

`taskq-dev bridge run` is the foreground form; this module detaches it and remembers its pid next to
the cluster state, so the cluster and its bridged processes go down together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from taskq_dev.cluster import default_root

STOP_WAIT_S = 15.0


def _pid_file() -> Path:
    return default_root() / "bridge.pid"


def stop() -> bool:
    """Stop the detached bridge if one runs (it stops its own children); True if there was one."""
    pid_file = _pid_file()
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGINT)
    except (ValueError, ProcessLookupError):
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def start(kubeconfig: Path) -> int:
    """Start `taskq-dev bridge run` in its own session, replacing a previous one; return its pid."""
    stop()
    with open(default_root() / "bridge.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskq_dev.cli", "bridge", "run", "--kubeconfig", str(kubeconfig)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _pid_file().write_text(str(process.pid))
    return process.pid
