"""Debian root filesystems for servers the host's Debian release does not package (RabbitMQ 4.0 from trixie).

`ensure_root(recipe)` returns a finished root made by `debootstrap --variant=minbase --include=...`
from this machine's own Debian mirror, built once into the harness cache. The folder name carries a
hash of the recipe, so a changed recipe builds a new root (an old one stays usable by nodes still
running from it until `sweep_old_roots` removes it). A build runs in its own mount and pid namespace
(mounts debootstrap makes vanish with it, even when it is killed), under a file lock (parallel test
sessions share one build), into a `.partial` folder renamed into place at the end, so a killed build
never leaves a root that looks done.

Called by `taskq_dev.rabbitmq` (lazily, on a node's first start) and `taskq-dev tools build`.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from taskq_dev import docker, paths
from taskq_dev.service_base import ServiceError

BUILD_TIMEOUT = 1200.0
"""debootstrap of trixie minbase plus rabbitmq-server takes about 60 s on an idle machine."""
LOCK_TIMEOUT = BUILD_TIMEOUT + 60.0
STAMP_FILE = ".taskq-rootfs.json"
"""Written into the root as the last step before it is renamed into place."""


class RootfsError(ServiceError):
    """A root could not be built; the message has the tail of debootstrap's output."""


@dataclass(frozen=True)
class RootRecipe:
    """What to debootstrap: the suite, the extra packages, and a revision to bump when the steps change."""

    name: str
    suite: str
    packages: tuple[str, ...]
    revision: int = 1

    def stamp(self) -> str:
        key = json.dumps([self.suite, sorted(self.packages), self.revision, "minbase"])
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @property
    def home(self) -> Path:
        """The cache folder holding every build of this recipe's name (one subfolder per stamp)."""
        return paths.cache_dir() / "tools" / self.name

    @property
    def root(self) -> Path:
        """Where the finished root of this exact recipe lives (it may not be built yet)."""
        return self.home / f"{self.suite}-{self.stamp()}" / "root"


RABBITMQ_TRIXIE = RootRecipe(name="rabbitmq-trixie", suite="trixie", packages=("rabbitmq-server",))
"""RabbitMQ 4.0.5 on Erlang/OTP 27 (Debian trixie), run by `taskq_dev.rabbitmq` as a chroot."""


def is_built(recipe: RootRecipe) -> bool:
    """Whether the recipe's root is finished (its stamp file says so)."""
    try:
        stamp = json.loads((recipe.root / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("stamp") == recipe.stamp()


@contextmanager
def _build_lock(recipe: RootRecipe) -> Iterator[None]:
    recipe.home.mkdir(parents=True, exist_ok=True)
    with open(recipe.home / ".lock", "a+") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RootfsError(f"another build of {recipe.root} held its lock for {LOCK_TIMEOUT:.0f} s") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _debootstrap_argv(recipe: RootRecipe, target: Path) -> list[str]:
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise RootfsError("debootstrap is not installed (apt-get install debootstrap)")
    try:
        mirror = docker.debian_mirror()  # the host's bookworm mirror serves trixie too
    except docker.DockerError as exc:
        raise RootfsError(str(exc)) from exc
    return [
        # its own mount and pid namespace: proc/sys mounts it makes die with it, even on SIGKILL
        "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
        debootstrap, "--variant=minbase", *([f"--include={','.join(recipe.packages)}"] if recipe.packages else []),
        recipe.suite, str(target), mirror,
    ]  # fmt: skip


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the building process dies (then `--kill-child` ends the rest)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _build(recipe: RootRecipe) -> None:
    build_dir = recipe.root.parent
    build_dir.mkdir(parents=True, exist_ok=True)
    partial = build_dir / "root.partial"
    shutil.rmtree(partial, ignore_errors=True)  # a killed build's leftovers (we hold the lock)
    argv = _debootstrap_argv(recipe, partial)
    print(
        f"taskq-dev: building {recipe.root} with debootstrap {recipe.suite} (first run only, ~1 min)", file=sys.stderr, flush=True
    )
    started = time.monotonic()
    log_path = build_dir / "debootstrap.log"
    try:
        with open(log_path, "wb") as log:
            result = subprocess.run(
                argv,
                check=False,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads here; the build must die with us)
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
            )
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise RootfsError(f"debootstrap {recipe.suite} took more than {BUILD_TIMEOUT:.0f} s (log: {log_path})") from exc
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-10:])
        shutil.rmtree(partial, ignore_errors=True)
        raise RootfsError(f"debootstrap {recipe.suite} failed (exit {result.returncode}, log: {log_path}):\n{tail}")
    seconds = time.monotonic() - started
    stamp = {"stamp": recipe.stamp(), "suite": recipe.suite, "packages": list(recipe.packages), "seconds": round(seconds, 1)}
    (partial / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    shutil.rmtree(recipe.root, ignore_errors=True)  # an unstamped (never finished) root, if any
    partial.rename(recipe.root)
    print(f"taskq-dev: {recipe.root} built in {seconds:.0f} s", file=sys.stderr, flush=True)


def ensure_root(recipe: RootRecipe = RABBITMQ_TRIXIE) -> Path:
    """The finished root of `recipe`, built now if missing (about a minute; once per machine)."""
    if is_built(recipe):
        return recipe.root
    with _build_lock(recipe):
        built_now = not is_built(recipe)  # another session may have finished it while we waited
        if built_now:
            _build(recipe)
    if built_now:
        sweep_old_roots(recipe)
    return recipe.root


def processes_rooted_in(root: Path) -> list[int]:
    """Pids of the processes whose root directory (chroot) is `root`."""
    found: list[int] = []
    target = str(root.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "root") == target:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def sweep_old_roots(recipe: RootRecipe = RABBITMQ_TRIXIE) -> list[Path]:
    """Delete builds of other revisions of `recipe` that no process runs in; return what was deleted."""
    removed: list[Path] = []
    if not recipe.home.is_dir():
        return removed
    with _build_lock(recipe):
        for build_dir in sorted(recipe.home.iterdir()):
            if not build_dir.is_dir() or build_dir == recipe.root.parent:
                continue
            if processes_rooted_in(build_dir / "root"):
                continue
            shutil.rmtree(build_dir, ignore_errors=True)
            removed.append(build_dir)
    return removed
