"""CPU accounting for the worker benchmark (`bench/worker.py` imports it): a process tree's CPU and a py-spy profile summary.

`TreeCpu` reads the CPU seconds of a process and all its descendants, counting descendants that have
exited through their parent's `children_user`/`children_system` (the kernel adds a child's CPU there
when its parent reaps it). `profile_parent` samples one process with py-spy (its own threads only, not
its children) and `summarize_collapsed` sorts the samples into the costs the brief asks about.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extras


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds (user + system) at one moment: the whole tree and the root process alone."""

    tree_s: float
    root_s: float
    processes: int


class TreeCpu:
    """CPU seconds of a process and every descendant, live or exited-and-reaped.

    Each live process contributes user + system + children_user + children_system; the difference of two
    samples is the tree's CPU between them, including descendants that started or exited in between
    (their parent's children_* grows by their whole lifetime when it reaps them). A descendant reaped
    between the listing and the reads may be missed or counted twice once; the pools measured here
    keep their children for the whole run, so that does not happen in practice.
    """

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)

    def sample(self) -> CpuSample:
        tree = 0.0
        root = 0.0
        processes = 0
        try:
            members = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            members = []
        for member in members:
            try:
                times = member.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            own = times.user + times.system
            tree += own + times.children_user + times.children_system
            processes += 1
            if member.pid == self._root.pid:
                root = own
        return CpuSample(tree_s=tree, root_s=root, processes=processes)


def py_spy() -> str | None:
    """The py-spy executable next to this Python (its virtualenv) or on PATH, if installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) of each live thread of process `pid`, by native thread id."""
    try:
        return {thread.id: (thread.user_time, thread.system_time) for thread in psutil.Process(pid).threads()}
    except psutil.NoSuchProcess:
        return {}


THREAD_LINE = re.compile(r'^Thread (0x[0-9A-Fa-f]+|\d+) \([^)]*\): "(.*)"$')


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names of process `pid` by native thread id, from one `py-spy dump` (empty without py-spy)."""
    executable = py_spy()
    if executable is None:
        return {}
    dumped = subprocess.run(
        [executable, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, timeout=60, check=False
    )
    names: dict[int, str] = {}
    for line in dumped.stdout.decode(errors="replace").splitlines():
        match = THREAD_LINE.match(line.strip())
        if match:
            names[int(match.group(1), 0)] = match.group(2)
    return names


def cpu_by_thread_name(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], names: dict[int, str]
) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds between two `thread_cpu` readings per thread name; numbered names grouped (slot-N)."""
    grouped: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for tid, (user, system) in after.items():
        name = re.sub(r"\d+$", "N", names.get(tid, f"unnamed (tid {tid})"))
        user_before, system_before = before.get(tid, (0.0, 0.0))
        grouped[name][0] += user - user_before
        grouped[name][1] += system - system_before
    ordered = sorted(grouped.items(), key=lambda item: -(item[1][0] + item[1][1]))
    return {name: (user, system) for name, (user, system) in ordered}


def profile_parent(pid: int, seconds: int, out: Path, rate: int = 250) -> subprocess.CompletedProcess[bytes] | None:
    """Sample process `pid` (its threads, not its children) for `seconds` into collapsed stacks at `out`.

    Non-blocking sampling (the process is not paused); only samples of the thread holding the GIL
    (`--gil`), so the shares are of the Python-level CPU (encoding, pickling, pika's and pymongo's
    Python code), not of time spent waiting in a system call with the GIL released.
    """
    executable = py_spy()
    if executable is None:
        return None
    argv = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--gil",
        "--output",
        str(out),
    ]
    return subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=False)


# Leaf-most frame that matches wins: pickling called from the pool counts as pickling, pymongo's
# socket writes called from the committer as the store, and so on.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pickling", ("pickle", "reduction.py", "copyreg")),
    ("pipe I/O (multiprocessing.connection)", ("multiprocessing/connection.py",)),
    ("store client (pymongo/bson)", ("pymongo/", "bson/")),
    ("pika (AMQP frames, acks, delivery callbacks)", ("pika/",)),
    ("JSON logging", ("taskq/worker/logs.py", "json/")),
    ("health/metrics server", ("taskq/worker/health.py", "prometheus_client", "http/server.py", "socketserver.py")),
    ("group commit (committer, outcome decisions)", ("taskq/worker/committer.py", "taskq/core/", "taskq/store/")),
    ("pool slot threads (process.py bookkeeping)", ("taskq/worker/pools/",)),
    ("connection stage (consumer.py, acks)", ("taskq/worker/consumer.py", "taskq/worker/acks.py", "taskq/worker/delivery.py")),
    ("queue/threading handoff", ("queue.py", "threading.py")),
)


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):  # leaf last in py-spy's collapsed format
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, object]:
    """Share of samples per category and the functions with the most own (leaf) samples."""
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame and not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        by_category[_category(frames)] += count
        by_leaf[frames[-1]] += count
    if total == 0:
        return {"samples": 0}
    return {
        "samples": total,
        "share_by_category": {name: round(count / total, 3) for name, count in by_category.most_common()},
        "top_leaf_functions": {name: round(count / total, 3) for name, count in by_leaf.most_common(top)},
    }
