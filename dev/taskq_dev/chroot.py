"""Run a server from a shared, read-only Debian root: a chroot in its own mount and pid namespace.

`ChrootCommand.argv()` wraps a command in `unshare --mount --pid --fork --kill-child`, and a small
shell step inside the new namespaces binds the root onto itself read-only, binds one per-server data
folder from outside the root at a fixed path inside it, mounts `proc` and a private `/tmp`, and
`exec`s `chroot`. Every mount lives only in that namespace: no other process sees it, and the kernel
drops it when the namespace's last process exits, so a stopped or killed server leaves no mount and
no process behind (the pid namespace's first process takes every other one down with it). Several
servers run from one root at once, each with its own data.

The recorded process is the outer `unshare`; it ignores SIGTERM, so `stop` signals the namespace's
first process (the command itself) and waits for `unshare` to exit. Called by `taskq_dev.rabbitmq`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskq_dev.processes import BackgroundProcess

MARKER_ENV = "TASKQ_NODE_DIR"
"""Set in the environment of every server process the harness starts, to find strays by their data folder."""

_ENTER = """set -eu
root=$1; data=$2; inner=$3; shift 3
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --bind "$data" "$root$inner"
mount -t proc proc "$root/proc"
mount -t tmpfs -o size=256m,mode=1777 tmpfs "$root/tmp"
exec chroot "$root" "$@"
"""


@dataclass(frozen=True)
class ChrootCommand:
    """`command` run inside `root` with `data` (outside the root) bound writable at `inner`."""

    root: Path
    data: Path
    inner: str
    env: Mapping[str, str]

    def argv(self, command: Sequence[str]) -> list[str]:
        """The host command line that runs `command` inside the root with a clean environment."""
        pairs = [f"{name}={value}" for name, value in sorted(self.env.items())]
        return [
            "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
            "sh", "-c", _ENTER, "taskq-chroot", str(self.root), str(self.data), self.inner,
            "/usr/bin/env", "-i", *pairs, *command,
        ]  # fmt: skip


def _parent_of(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (the kernel here has no `/proc/PID/task/TID/children`)."""
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit() and _parent_of(int(entry.name)) == pid]


def stop_namespace(process: BackgroundProcess, timeout: float) -> None:
    """SIGTERM the namespace's first process (a graceful stop), wait up to `timeout` s, then SIGKILL it all.

    SIGKILL to the outer `unshare` (started with `--kill-child`) kills the namespace's first process,
    and with it every process of the namespace; its mounts go with them.
    """
    if process.pid is not None and process.alive():
        for child in children_of(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        if not process.wait_exit(timeout):
            process.signal(signal.SIGKILL)
            process.wait_exit(10.0)
    process.terminate(1.0)  # forgets the pid; a no-op when it is gone


def marked_processes(data_dir: Path) -> list[int]:
    """Pids of processes started with `MARKER_ENV=data_dir` in their environment (also inside chroots)."""
    return [pid for pid, marked in all_marked_dirs().items() if marked == data_dir]


def all_marked_dirs() -> dict[int, Path]:
    """For every running process with a `MARKER_ENV` entry: its pid and the data folder it names."""
    prefix = f"{MARKER_ENV}=".encode()
    found: dict[int, Path] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                found[int(entry.name)] = Path(item[len(prefix) :].decode(errors="replace"))
    return found


def is_shared_epmd(pid: int) -> bool:
    """Whether `pid` is an epmd on Erlang's default port outside any chroot: other nodes use it, never a stray.

    Nodes the harness starts now run their own epmd (`ERL_EPMD_PORT` in its environment); only nodes
    recorded before that used the shared one.
    """
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "epmd" or os.readlink(f"/proc/{pid}/root") != "/":
            return False
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return not any(item.startswith(b"ERL_EPMD_PORT=") and item != b"ERL_EPMD_PORT=4369" for item in environ)


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL each pid (gone ones are skipped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def has_exited(pid: int) -> bool:
    """Whether `pid` is gone or a zombie: only then has the kernel closed its files and sockets.

    A process that is being killed loses its memory (and with it a readable `environ`, so it no longer
    looks marked) before its files are closed; a big Erlang VM can hold its listening port for a
    moment after that. Waiting for the marker alone let `close()` return with the node's port open.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :][:1] in ("Z", "X")
