"""`taskq_dev.processes.stop_processes`: SIGTERM all, one bounded wait, SIGKILL what is left."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from taskq_dev.processes import stop_process, stop_processes

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
EXITS_ON_SIGTERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(7)); print('up', flush=True); time.sleep(60)"
)


def _start(code: str, *, new_session: bool = False) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=new_session)
    assert process.stdout is not None and process.stdout.readline() == b"up\n"  # handlers installed
    return process


def test_drained_processes_report_their_code_and_stubborn_ones_are_killed_in_time() -> None:
    polite, stubborn, done = _start(EXITS_ON_SIGTERM), _start(IGNORES_SIGTERM), _start("print('up', flush=True)")
    done.wait(timeout=10)  # exited before the stop: not signalled, its own code
    started = time.monotonic()
    codes = stop_processes([polite, stubborn, done], grace_s=1.0)
    elapsed = time.monotonic() - started
    assert codes == [7, None, 0]
    assert stubborn.returncode == -signal.SIGKILL
    assert elapsed < 5, f"one shared deadline, not one per process: {elapsed:.1f} s"


def test_group_stop_reaches_the_whole_session() -> None:
    leader = _start(IGNORES_SIGTERM, new_session=True)
    assert stop_process(leader, grace_s=0.5, group=True) is None
    assert leader.returncode == -signal.SIGKILL


def test_a_killed_process_counts_as_exited_only_once_the_kernel_has_closed_its_files() -> None:
    from taskq_dev.chroot import has_exited, kill_pids

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not has_exited(child.pid)  # running
        kill_pids([child.pid])
        deadline = time.monotonic() + 10
        while not has_exited(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert has_exited(child.pid)  # a zombie now: not reaped yet, but its files are closed
        assert child.poll() == -signal.SIGKILL
        assert has_exited(child.pid)  # reaped: gone
    finally:
        child.kill()
        child.wait()
