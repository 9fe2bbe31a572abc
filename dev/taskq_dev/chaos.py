"""The chaos run: N tasks through taskq-worker processes while faults hit them, and what held.

`run(plan, services, work_dir)` submits `plan.tasks` tasks of mixed length (`taskq_dev.chaos_tasks`)
through `plan.workers` worker processes, each reaching the broker through its own toxiproxy listener
(`taskq_dev.faultproxy`), while it:

- SIGKILLs a random worker's process group every few seconds and starts a replacement at once;
- kills the producer mid-`submit_many` and reruns it with the same ids (until it completes, bounded);
- cuts one worker's broker connection (proxy disabled) while tasks run, and blackholes another's for
  a few seconds (bytes dropped, then the connection is closed: TCP never resumes a stream with holes);
- restarts the broker once and stops (SIGSTOP) the store for `plan.store_outage_s`;
- runs the outbox sweep periodically, as the operator's tick does.

Every execution appends to a ledger file (written by the task itself, outside the store). A sampler
reads every task's state and attempts twice a second and records any regression (a final state that
changes, attempts that decrease). The report (`report`) has the top-level keys the chaos contract
names: tasks, final, lost, stuck, regressions, duplicates, faults, pass, machine, when.

With a `WorkerMode` (`taskq_dev.chaos_cluster`, `make chaos-cluster`) the workers are the pods of an
operator-managed TaskQueue on the local cluster instead, and that mode adds its own faults (a lost node).

Used by `bench/chaos.py` (`make chaos`) and `tests/chaos/test_chaos.py` (1,000 tasks in `make test`).
Every loop is bounded in count and time; every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import pymongo
import pymongo.errors

from taskq.broker.admin import queue_depth
from taskq.broker.connection import connect
from taskq.client import Client
from taskq.errors import TaskqError
from taskq.settings import Settings
from taskq_dev.faultproxy import FaultProxy, Proxy, url_port, url_through
from taskq_dev.processes import process_start_ticks

FINAL = frozenset({"succeeded", "failed", "dead"})
TASK_MODULE = "taskq_dev.chaos_tasks"


@dataclass(frozen=True)
class ChaosPlan:
    """What to run and which faults to inject when (seconds after the producer starts)."""

    tasks: int = 1000
    workers: int = 4
    concurrency: int = 4
    seed: int = 7
    kill_every_s: tuple[float, float] = (3.0, 5.0)
    producer_pace_s: float = 12.0
    """The first producer spreads its `submit_many` over this long, so it can be killed in the middle."""
    producer_kill_fraction: float = 0.35
    cut_at_s: float = 10.0
    cut_for_s: float = 3.0
    blackhole_at_s: float = 16.0
    blackhole_for_s: float = 6.0
    broker_restart_at_s: float = 24.0
    store_outage_at_s: float = 50.0
    store_outage_s: float = 10.0
    sweep_every_s: float = 30.0
    sweep_grace_s: float = 60.0
    """The outbox sweep as the operator runs it by default (every 30 s, entries older than 60 s)."""
    settle_timeout_s: float = 180.0
    """After the last scheduled fault, how long every task gets to reach a final state."""
    after_final_s: float = 5.0
    """Keep sampling (workers still running) this long after every task is final: late writes show."""
    sample_interval_s: float = 0.5
    stall_s: float = 60.0
    """Stop waiting when no task became final for this long, the faults are over and no message is left."""
    mix: tuple[tuple[str, float, float, float], ...] = (
        ("short", 0.70, 0.02, 0.2),
        ("medium", 0.22, 0.5, 2.0),
        ("long", 0.03, 3.0, 6.0),
        ("retried", 0.05, 0.02, 0.2),
    )
    """(kind, share, min seconds, max seconds); `retried` tasks fail their first attempt by plan."""


@dataclass
class ChaosServices:
    """The broker and store of the run; both private, since the run restarts and stops them."""

    amqp_url: str
    mongodb_uri: str
    management_base: str
    management_auth: tuple[str, str]
    vhost: str
    restart_broker: Callable[[], float]
    store_pid: Callable[[], int | None]
    index_writes: Callable[[str], object]


class Timeline:
    """The faults injected, in order, with times relative to the run's start (thread-safe)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def now(self) -> float:
        return round(time.time() - self.started, 3)

    def add(self, fault: str, **details: Any) -> dict[str, Any]:
        event = {"at_s": self.now(), "fault": fault, **details}
        with self._lock:
            self.events.append(event)
        return event

    def close(self, event: dict[str, Any]) -> None:
        with self._lock:
            event["until_s"] = self.now()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self.events]


# ---- the tasks -----------------------------------------------------------------------------------


def task_specs(plan: ChaosPlan, run_id: str, ledger: Path) -> list[dict[str, Any]]:
    """The run's tasks (deterministic for a seed): ids `<run>-<n>`, a mix of lengths and planned retries."""
    rng = random.Random(plan.seed)
    kinds = [k for k, *_ in plan.mix]
    weights = [share for _, share, *_ in plan.mix]
    bounds = {k: (low, high) for k, _, low, high in plan.mix}
    specs = []
    for n in range(plan.tasks):
        kind = rng.choices(kinds, weights)[0]
        low, high = bounds[kind]
        specs.append(
            {
                "id": f"{run_id}-{n:05d}",
                "name": "chaos_step",
                "kwargs": {"ledger": str(ledger), "seconds": round(rng.uniform(low, high), 3), "fail_first": kind == "retried"},
            }
        )
    return specs


# ---- the producer (a subprocess, so it can be SIGKILLed mid-submit_many) ------------------------


def produce_main(argv: list[str]) -> int:
    """`python -m taskq_dev.chaos produce SPECS [--pace S]`: one `submit_many` of every task in SPECS.

    Prints `settled N` as confirms (or known ids) come back and `done ...` at the end; exit 0 when
    every task was accepted, 3 when the broker or store failed (the caller reruns with the same ids).
    """
    parser = argparse.ArgumentParser(prog="taskq_dev.chaos produce")
    parser.add_argument("specs", type=Path)
    parser.add_argument("--pace", type=float, default=0.0, help="spread the stream over this many seconds")
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args(argv)
    specs = json.loads(args.specs.read_text())
    gap = args.pace / max(1, len(specs))
    settled = [0]

    def progress(n: int) -> None:
        settled[0] += n
        print(f"settled {settled[0]}", flush=True)

    def stream() -> Iterator[dict[str, Any]]:
        for spec in specs:
            if gap:
                time.sleep(gap)
            yield spec

    try:
        with Client(Settings(), batch_size=args.batch) as client:
            receipt = client.submit_many(stream(), progress=progress)
    except TaskqError as exc:
        print(f"failed {type(exc).__name__}: {exc}", flush=True)
        return 3
    print(f"done published={receipt.published} existing={receipt.existing}", flush=True)
    return 0


# ---- worker processes ----------------------------------------------------------------------------


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


@dataclass
class Worker:
    """One taskq-worker process (its own session, so a kill takes its pool children too)."""

    slot: int
    generation: int
    worker_id: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


class Fleet:
    """The run's workers, one per slot, each slot with its own broker proxy."""

    def __init__(self, work_dir: Path, env: dict[str, str], proxies: list[Proxy], amqp_url: str, concurrency: int) -> None:
        self.work_dir = work_dir
        self.env = env
        self.proxies = proxies
        self.amqp_url = amqp_url
        self.concurrency = concurrency
        self.lock = threading.Lock()
        self.slots: dict[int, Worker] = {}
        self.retired: list[Worker] = []
        self.generations: Counter[int] = Counter()
        self.closed = False

    def start(self, slot: int) -> Worker | None:
        """A new worker in `slot`; None once the fleet is being stopped."""
        with self.lock:
            if self.closed:
                return None
            self.generations[slot] += 1
            generation = self.generations[slot]
            worker_id = f"w{slot}g{generation}"
            log_path = self.work_dir / f"worker-{worker_id}.log"
            env = {
                **self.env,
                "TASKQ_AMQP_URL": url_through(self.amqp_url, self.proxies[slot]),
                "TASKQ_WORKER_ID": worker_id,
                "TASKQ_CONCURRENCY": str(self.concurrency),
            }
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [_executable("taskq-worker"), "--log-level", "info"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            worker = Worker(slot, generation, worker_id, process, log_path)
            self.slots[slot] = worker
            return worker

    def live(self) -> list[Worker]:
        with self.lock:
            return [w for w in self.slots.values() if w.alive()]

    def exited_on_their_own(self) -> list[Worker]:
        """Workers that exited although nobody killed them (each is retired once and reported)."""
        with self.lock:
            gone = [w for w in self.slots.values() if not w.alive()]
            for w in gone:
                del self.slots[w.slot]
                self.retired.append(w)
            return gone

    def kill(self, worker: Worker) -> None:
        worker.kill()
        with self.lock:
            if self.slots.get(worker.slot) is worker:
                del self.slots[worker.slot]
            self.retired.append(worker)

    def stop_all(self, grace_s: float = 15.0) -> None:
        with self.lock:
            self.closed = True
            running = list(self.slots.values())
        for worker in running:
            if worker.alive():
                os.killpg(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for worker in running:
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()


# ---- the ledger and the sampler ------------------------------------------------------------------


@dataclass
class Execution:
    task_id: str
    attempt: int
    worker_id: str
    pid: int
    started: float
    outcome: str = "none"
    """`end`, `fail` (a planned failure), or `none` (never finished: killed or cut short)."""
    ended: float | None = None


def read_ledger(path: Path) -> dict[str, list[Execution]]:
    """Executions per task, in start order (a start line opens one; its pid's next end/fail closes it)."""
    runs: dict[str, list[Execution]] = defaultdict(list)
    if not path.exists():
        return runs
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) != 6:
            continue
        kind, task_id, attempt, worker_id, pid, at = parts
        if kind == "start":
            runs[task_id].append(Execution(task_id, int(attempt), worker_id, int(pid), float(at)))
            continue
        for execution in reversed(runs[task_id]):
            if execution.pid == int(pid) and execution.outcome == "none":
                execution.outcome, execution.ended = kind, float(at)
                break
    for executions in runs.values():
        executions.sort(key=lambda e: e.started)
    return runs


def observe(
    latest: dict[str, tuple[str, int]], first_final: dict[str, float], rows: list[dict[str, Any]], at: float
) -> list[dict[str, Any]]:
    """Fold one read of every task (`_id`, `state`, `attempts`) into `latest` and `first_final`; return the
    regressions it shows: a final state that changed, attempts that decreased, a document that vanished."""
    found: list[dict[str, Any]] = []
    seen = set()
    for row in rows:
        task_id, state, attempts = str(row["_id"]), str(row.get("state")), int(row.get("attempts") or 0)
        seen.add(task_id)
        before = latest.get(task_id)
        if before is not None:
            old_state, old_attempts = before
            if old_state in FINAL and state != old_state:
                found.append({"task": task_id, "at_s": at, "from": old_state, "to": state, "why": "final state changed"})
            if attempts < old_attempts:
                found.append({"task": task_id, "at_s": at, "from": old_attempts, "to": attempts, "why": "attempts decreased"})
        latest[task_id] = (state, attempts)
        if state in FINAL:
            first_final.setdefault(task_id, at)
    for task_id in [t for t in latest if t not in seen and latest[t][0] != "missing"]:
        found.append({"task": task_id, "at_s": at, "from": latest[task_id][0], "to": "missing", "why": "document vanished"})
        latest[task_id] = ("missing", latest[task_id][1])
    return found


class Sampler:
    """Reads every task's state and attempts every `interval` s; records states that move backwards."""

    def __init__(self, uri: str, database: str, interval: float, timeline: Timeline) -> None:
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, socketTimeoutMS=5000, retryReads=False
        )
        self.tasks = self.client[database]["tasks"]
        self.interval = interval
        self.timeline = timeline
        self.latest: dict[str, tuple[str, int]] = {}
        self.regressions: list[dict[str, Any]] = []
        self.first_final: dict[str, float] = {}
        """When the sampler first saw each task in a final state (seconds after the run's start)."""
        self.samples = 0
        self.failed_samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="chaos-sampler", daemon=True)

    def sample(self) -> bool:
        try:
            rows = list(self.tasks.find({}, {"state": 1, "attempts": 1}))
        except pymongo.errors.PyMongoError:
            self.failed_samples += 1
            return False
        self.regressions += observe(self.latest, self.first_final, rows, self.timeline.now())
        self.samples += 1
        return True

    def _loop(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self.sample()
            # a scan of a large collection on FerretDB takes a while: never sample more than half the time
            self.stop.wait(max(self.interval, 2 * (time.monotonic() - started)))

    def final_count(self) -> int:
        return sum(1 for state, _ in self.latest.values() if state in FINAL)

    def close(self, *, last_sample: bool = False) -> None:
        """Stop sampling (after one more sample when asked) and close the store client."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(30)
        if last_sample:
            self.sample()
        self.client.close()


# ---- the run -------------------------------------------------------------------------------------


@dataclass
class RunState:
    plan: ChaosPlan
    timeline: Timeline
    fleet: Fleet
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    producer_runs: list[dict[str, Any]] = field(default_factory=list)
    producer_done: threading.Event = field(default_factory=threading.Event)
    faults_done: threading.Event = field(default_factory=threading.Event)
    republished: dict[str, str] = field(default_factory=dict)
    """Task id -> the fault that may have sent its message a second time (producer rerun, sweep)."""
    outbox_queued: Callable[[], set[str]] = set


def outbox_queued(uri: str, database: str) -> set[str]:
    """Ids with an outbox entry whose task is still `queued`: what a rerun with the same ids publishes
    again, although the broker may have confirmed (and delivered) the first publish already."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=10_000)
    try:
        db = client[database]
        pending = {str(entry["_id"]) for entry in db["outbox"].find({}, {"_id": 1})}
        queued = {str(doc["_id"]) for doc in db["tasks"].find({"state": "queued"}, {"_id": 1})}  # one scan, not a read per id
        return pending & queued
    except pymongo.errors.PyMongoError:
        return set()
    finally:
        client.close()


def _guarded(state: RunState, name: str, body: Callable[[], None]) -> Callable[[], None]:
    def wrapped() -> None:
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - a fault thread's error is reported, never lost
            state.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    return wrapped


def _in_flight(ledger: Path, worker_id: str) -> int:
    """How many executions on `worker_id` have started and not ended, per the ledger now."""
    return sum(1 for runs in read_ledger(ledger).values() for e in runs if e.worker_id == worker_id and e.outcome == "none")


def _busiest(state: RunState, ledger: Path) -> Any:
    live = state.fleet.live()
    if not live:
        return None, 0
    counts = {w.worker_id: _in_flight(ledger, w.worker_id) for w in live}
    chosen = max(live, key=lambda w: counts[w.worker_id])
    return chosen, counts[chosen.worker_id]


def _killer(state: RunState, rng: random.Random) -> None:
    low, high = state.plan.kill_every_s
    for _ in range(100_000):  # bounded; ends with the run
        if state.stop.wait(rng.uniform(low, high)):
            return
        for gone in state.fleet.exited_on_their_own():
            state.timeline.add("worker_exited_unexpectedly", target=gone.worker_id, code=gone.process.returncode)
            state.fleet.start(gone.slot)
        live = state.fleet.live()
        if not live:
            continue
        victim = rng.choice(live)
        state.fleet.kill(victim)
        state.timeline.add("worker_sigkill", target=victim.worker_id)
        replacement = state.fleet.start(victim.slot)
        if replacement is not None:
            state.timeline.add("worker_started", target=replacement.worker_id, replaces=victim.worker_id)


def _producer(state: RunState, specs_path: Path, env: dict[str, str], work_dir: Path) -> None:
    plan = state.plan
    kill_at = max(1, int(plan.tasks * plan.producer_kill_fraction))
    deadline = time.monotonic() + plan.settle_timeout_s + plan.store_outage_at_s
    for run in range(1, 21):  # the first (killed) and up to 19 reruns with the same ids
        first = run == 1
        argv = [sys.executable, "-m", "taskq_dev.chaos", "produce", str(specs_path)]
        if first:
            argv += ["--pace", str(plan.producer_pace_s)]
        else:
            candidates = state.outbox_queued()
            event = state.timeline.add("producer_rerun", detail=f"run {run}, same ids", outbox_queued=len(candidates))
            for task_id in candidates:
                state.republished.setdefault(task_id, f"producer_rerun at {event['at_s']:.1f}s")
        with open(work_dir / f"producer-{run}.log", "wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        record: dict[str, Any] = {"run": run, "started_s": state.timeline.now()}
        settled = 0
        assert process.stdout is not None
        for raw in process.stdout:  # ends when the producer exits (or is killed)
            line = raw.decode(errors="replace").strip()
            if line.startswith("settled "):
                settled = int(line.split()[1])
                if first and settled >= kill_at and process.poll() is None:
                    process.kill()
                    state.timeline.add("producer_sigkill", detail=f"mid-submit_many after {settled} of {plan.tasks} settled")
            elif line.startswith(("done", "failed")):
                record["last_line"] = line
        code = process.wait(30)
        record.update({"exit": code, "settled": settled, "ended_s": state.timeline.now()})
        state.producer_runs.append(record)
        if not first:
            event["detail"] += f": exit {code}, {record.get('last_line', '')}"
            state.timeline.close(event)
        if code == 0 and not first:
            break
        if code == 0 and first:
            state.errors.append("the first producer finished before it could be killed (raise producer_pace_s)")
            break
        if time.monotonic() > deadline:
            state.errors.append("the producer never completed")
            break
        time.sleep(0.5 if first else 2.0)
    state.producer_done.set()


def _next_planned_failure(ledger: Path, stop: threading.Event, timeout: float) -> tuple[str, str] | None:
    """(worker id, task id) of the next `fail` line appended to the ledger within `timeout` s, or None."""
    offset = ledger.stat().st_size if ledger.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if ledger.exists():
            with open(ledger, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 6 and parts[0] == "fail":
                    return parts[3], parts[1]
        time.sleep(0.005)
    return None


def _faults(state: RunState, services: ChaosServices, ledger: Path, rng: random.Random) -> None:
    plan = state.plan
    schedule = sorted(
        [
            (plan.cut_at_s, "cut"),
            (plan.blackhole_at_s, "blackhole"),
            (plan.broker_restart_at_s, "broker_restart"),
            (plan.store_outage_at_s, "store_outage"),
        ]
    )
    for at, kind in schedule:
        wait = at - state.timeline.now()
        if wait > 0 and state.stop.wait(wait):
            return
        if kind in ("cut", "blackhole"):
            worker, running = _busiest(state, ledger)
            if worker is None:
                state.errors.append(f"{kind}: no live worker")
                continue
            proxy = state.fleet.proxies[worker.slot]
            if kind == "cut":
                # Aim between a retry publish and its ack: cut the worker whose task just failed by plan.
                failed = _next_planned_failure(ledger, state.stop, timeout=10.0)
                trigger: dict[str, Any] = {}
                if failed is not None:
                    found = [w for w in state.fleet.live() if w.worker_id == failed[0]]
                    if found:
                        worker, proxy = found[0], state.fleet.proxies[found[0].slot]
                        trigger = {"trigger_task": failed[1], "aim": "just after a planned failure (retry publish, then ack)"}
                proxy.cut()
                running = _in_flight(ledger, worker.worker_id)
                event = state.timeline.add("broker_connection_cut", target=worker.worker_id, in_flight=running, **trigger)
                state.stop.wait(plan.cut_for_s)
            else:
                event = state.timeline.add("broker_connection_blackhole", target=worker.worker_id, in_flight=running)
                proxy.blackhole()
                state.stop.wait(plan.blackhole_for_s)
                proxy.cut()  # then the connection breaks, as a long partition ends for TCP
            proxy.restore()
            state.timeline.close(event)
        elif kind == "broker_restart":
            event = state.timeline.add("broker_restart")
            seconds = services.restart_broker()
            event["detail"] = f"stopped and started again; start took {seconds:.1f} s"
            state.timeline.close(event)
        elif kind == "store_outage":
            pid = services.store_pid()
            if pid is None:
                state.errors.append("store_outage: no store process")
                continue
            event = state.timeline.add("store_sigstop", detail=f"{plan.store_outage_s:.0f} s")
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(plan.store_outage_s)  # not interruptible: the store must never stay stopped
            finally:
                os.kill(pid, signal.SIGCONT)
            state.timeline.close(event)
    state.faults_done.set()


def _sweeper(state: RunState, settings: Settings) -> None:
    with Client(settings) as client:
        for _ in range(10_000):
            if state.stop.wait(state.plan.sweep_every_s):
                return
            try:
                report = client.sweep(grace_s=state.plan.sweep_grace_s)
            except TaskqError as exc:
                state.timeline.add("sweep_failed", detail=type(exc).__name__)
                continue
            if report.republished:
                event = state.timeline.add(
                    "sweep_republished", detail=f"{len(report.republished)} tasks", tasks=report.republished[:20]
                )
                for task_id in report.republished:
                    state.republished.setdefault(task_id, f"sweep_republished at {event['at_s']:.1f}s")


def _queue_totals(services: ChaosServices, queue: str) -> dict[str, int]:
    """Messages (ready + unacked) in the run's queue and its retry/dead queues, by queue name."""
    vhost = quote(services.vhost, safe="")
    response = httpx.get(
        f"{services.management_base}/api/queues/{vhost}",
        params={"columns": "name,messages,messages_ready,messages_unacknowledged"},
        auth=services.management_auth,
        timeout=10,
    )
    response.raise_for_status()
    return {
        row["name"]: int(row.get("messages") or 0)
        for row in response.json()
        if row["name"] == queue or row["name"].startswith(queue + ".")
    }


def _exact_depths(amqp_url: str, names: list[str]) -> dict[str, int]:
    """Ready messages by passive declare (exact at once; the management API lags seconds)."""
    connection = connect(amqp_url, name="chaos-report")
    try:
        found = {}
        for name in names:
            depth = queue_depth(connection, name)
            found[name] = depth.messages if depth is not None else 0
        return found
    finally:
        connection.close()


class WorkerMode(Protocol):
    """Where the run's workers come from when they are not its own processes (`taskq_dev.chaos_cluster`:
    the pods of an operator-managed TaskQueue). Its fleet answers `live`, `kill`, `start`,
    `exited_on_their_own`, `stop_all` and `proxies[worker.slot]` like `Fleet`."""

    name: str
    description: str

    def open_fleet(self, worker_env: dict[str, str], fault_proxy: FaultProxy, database: str, queue: str) -> Any: ...

    def extra_faults(self, state: RunState) -> dict[str, Callable[[], None]]:
        """Fault threads of this mode; the run settles only after they have ended."""
        ...

    def finish(self, report: dict[str, Any]) -> None:
        """Add this mode's figures and checks to the report (and recompute `pass`)."""
        ...


def run(
    plan: ChaosPlan,
    services: ChaosServices,
    work_dir: Path,
    *,
    log: Callable[[str], None] = print,
    mode: WorkerMode | None = None,
) -> dict[str, Any]:
    """The whole chaos run; returns the report (see the module docstring). Without `mode` the workers
    are `plan.workers` taskq-worker processes started here."""
    work_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"chaos-{uuid.uuid4().hex[:6]}"
    database, queue = run_id.replace("-", "_"), run_id
    ledger = work_dir / "ledger.txt"
    specs = task_specs(plan, run_id, ledger)
    specs_path = work_dir / "tasks.json"
    specs_path.write_text(json.dumps(specs))
    rng = random.Random(plan.seed + 1)
    settings = Settings(amqp_url=services.amqp_url, mongodb_uri=services.mongodb_uri, database=database, queue=queue)
    base_env = {
        **os.environ,
        "TASKQ_AMQP_URL": services.amqp_url,
        "TASKQ_MONGODB_URI": services.mongodb_uri,
        "TASKQ_DATABASE": database,
        "TASKQ_QUEUE": queue,
    }
    worker_env = {
        **base_env,
        "TASKQ_TASK_MODULES": TASK_MODULE,
        "TASKQ_HEALTH_PORT": "0",
        "TASKQ_RETRY_INITIAL": "0.5",
        "TASKQ_RETRY_MAX": "2",
        "TASKQ_GRACE_SECONDS": "5",
    }
    # The collections exist before the first write, so FerretDB's by-_id write index is there from the start.
    with Client(settings) as client:
        client.store.ensure_indexes()
        client.ping()
        for name in ("tasks", "outbox", "workers"):
            db = client.store.tasks.database
            if name not in db.list_collection_names():
                db.create_collection(name)
    services.index_writes(database)

    wall_started = time.monotonic()
    timeline = Timeline(time.time())
    fault_proxy = FaultProxy(work_dir).start()
    fleet: Fleet | None = None
    state: RunState | None = None
    sampler = Sampler(services.mongodb_uri, database, plan.sample_interval_s, timeline)
    threads: list[threading.Thread] = []
    try:
        if mode is None:
            proxies = [fault_proxy.proxy(f"broker-slot{slot}", url_port(services.amqp_url)) for slot in range(plan.workers)]
            fleet = Fleet(work_dir, worker_env, proxies, services.amqp_url, plan.concurrency)
            for slot in range(plan.workers):
                fleet.start(slot)
        else:
            fleet = mode.open_fleet(worker_env, fault_proxy, database, queue)
        state = RunState(
            plan=plan, timeline=timeline, fleet=fleet, outbox_queued=lambda: outbox_queued(services.mongodb_uri, database)
        )
        sampler.thread.start()
        bodies = {
            "producer": lambda: _producer(state, specs_path, base_env, work_dir),
            "killer": lambda: _killer(state, rng),
            "faults": lambda: _faults(state, services, ledger, random.Random(plan.seed + 2)),
            "sweeper": lambda: _sweeper(state, settings),
        }
        if mode is not None:
            bodies.update(mode.extra_faults(state))
        for name, body in bodies.items():
            thread = threading.Thread(target=_guarded(state, name, body), name=f"chaos-{name}", daemon=True)
            thread.start()
            threads.append(thread)
        log(f"chaos: {plan.tasks} tasks, {plan.workers} workers x {plan.concurrency}, queue {queue}")
        # Wait: producer and faults done, then every task final (or the settle deadline).
        outer_deadline = time.monotonic() + plan.store_outage_at_s + plan.store_outage_s + plan.settle_timeout_s + 120
        settled_at: float | None = None
        last_log = 0.0
        progress_at, last_final = time.monotonic(), -1
        for _ in range(1_000_000):
            time.sleep(0.5)
            done_faults = (state.faults_done.is_set() or not threads[2].is_alive()) and not any(
                thread.is_alive() for thread in threads[4:]
            )
            done_producer = state.producer_done.is_set() or not threads[0].is_alive()
            final = sampler.final_count()
            if final != last_final:
                progress_at, last_final = time.monotonic(), final
            elif done_faults and done_producer and time.monotonic() - progress_at > plan.stall_s:
                if sum(_queue_totals(services, queue).values()) == 0:  # nothing left that could move them
                    state.errors.append(
                        f"stalled: {plan.tasks - final} tasks not final, no message left, for {plan.stall_s:.0f} s"
                    )
                    break
                progress_at = time.monotonic()
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log(f"chaos: t={timeline.now():.0f}s final {final}/{plan.tasks}, faults {len(timeline.events)}")
            if done_faults and done_producer and final >= plan.tasks and settled_at is None:
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() - settled_at >= plan.after_final_s:
                break
            if time.monotonic() > outer_deadline:
                state.errors.append("the run's deadline passed before every task was final")
                break
        state.stop.set()
        for thread in threads:
            thread.join(60)
        sampler.close(last_sample=True)
        latest, regressions = sampler.latest, sampler.regressions
        wall_s = time.monotonic() - wall_started
        queue_messages = _queue_totals(services, queue)
        exact = _exact_depths(services.amqp_url, sorted(queue_messages))
        observed = {"timeline": timeline.snapshot(), "first_final": sampler.first_final, "republished": state.republished}
        (work_dir / "observations.json").write_text(json.dumps({**observed, "latest": latest, "t0": timeline.started}))
        report = build_report(
            plan=plan,
            specs=specs,
            latest=latest,
            regressions=regressions,
            executions=read_ledger(ledger),
            timeline=timeline.snapshot(),
            queue_messages={name: max(queue_messages[name], exact.get(name, 0)) for name in queue_messages},
            errors=state.errors,
            wall_s=wall_s,
            samples=sampler.samples,
            failed_samples=sampler.failed_samples,
            producer_runs=state.producer_runs,
            t0=timeline.started,
            first_final=sampler.first_final,
            republished=state.republished,
        )
        report["queue"], report["database"] = queue, database
        if mode is not None:
            report["mode"], report["workers"] = mode.name, mode.description
            mode.finish(report)
        return report
    finally:
        if state is not None:
            state.stop.set()
        for thread in threads:
            thread.join(15)
        if fleet is not None:
            fleet.stop_all()
        fault_proxy.close()
        if not sampler.stop.is_set():
            sampler.close()


# ---- the report ----------------------------------------------------------------------------------

_WORKER_FAULTS = {
    "worker_sigkill",
    "broker_connection_cut",
    "broker_connection_blackhole",
    "worker_exited_unexpectedly",
    "worker_node_lost",
}
_GLOBAL_FAULTS = {"broker_restart", "store_sigstop"}


def _cause(
    previous: Execution,
    rerun: Execution | None,
    timeline: list[dict[str, Any]],
    t0: float,
    republished: str | None,
    final_at: float | None,
) -> str | None:
    """Why `rerun` ran after `previous` (the same task's execution before it), from the fault timeline:

    a fault on `previous`'s worker (killed, its broker connection cut or blackholed) between the two
    starts, else a second copy of the message (the task was published again by the producer's rerun
    or the sweep), else a fault on every worker (broker restart, store stopped) in that window. A
    fault after the task was seen final explains nothing (a redelivery is checked against the store
    and acked without running), so the window ends there. It is widened by 1 s for the clocks.
    """
    start = previous.started - t0 - 1.0
    end = (rerun.started if rerun is not None else previous.started + 600.0) - t0 + 1.0
    if final_at is not None:
        end = min(end, final_at + 1.0)

    def overlaps(event: dict[str, Any]) -> bool:
        return bool(event["at_s"] <= end and event.get("until_s", event["at_s"]) >= start)

    for event in timeline:
        if event["fault"] in _WORKER_FAULTS and event.get("target") == previous.worker_id and overlaps(event):
            return f"{event['fault']} {previous.worker_id} at {event['at_s']:.1f}s"
    if republished is not None:
        return f"{republished.split(' ')[0]}: a second copy of the message ({republished})"
    for event in timeline:
        if event["fault"] in _GLOBAL_FAULTS and overlaps(event):
            return f"{event['fault']} at {event['at_s']:.1f}s"
    return None


def _reruns(runs: list[Execution], planned_retry: bool) -> list[tuple[Execution, Execution]]:
    """(previous, rerun) for every execution beyond the planned ones: all but the first, except the
    first attempt-2 execution after an attempt-1 failure of a task that fails its first attempt by plan."""
    pairs = []
    planned_seen = False
    for previous, rerun in zip(runs, runs[1:], strict=False):
        if planned_retry and not planned_seen and rerun.attempt == 2 and any(e.outcome == "fail" for e in runs if e.attempt == 1):
            planned_seen = True
            continue
        pairs.append((previous, rerun))
    return pairs


def build_report(
    *,
    plan: ChaosPlan,
    specs: list[dict[str, Any]],
    latest: dict[str, tuple[str, int]],
    regressions: list[dict[str, Any]],
    executions: dict[str, list[Execution]],
    timeline: list[dict[str, Any]],
    queue_messages: dict[str, int],
    errors: list[str],
    wall_s: float,
    samples: int,
    failed_samples: int,
    producer_runs: list[dict[str, Any]],
    t0: float,
    first_final: dict[str, float],
    republished: dict[str, str],
) -> dict[str, Any]:
    """The chaos report from what was observed (pure: no I/O)."""
    ids = [spec["id"] for spec in specs]
    planned = {spec["id"]: 2 if spec["kwargs"]["fail_first"] else 1 for spec in specs}
    states = Counter(latest.get(task_id, ("missing", 0))[0] for task_id in ids)
    not_final = [task_id for task_id in ids if latest.get(task_id, ("missing", 0))[0] not in FINAL]
    messages_left = sum(queue_messages.values())
    # Lost: not final and nothing left that could ever move it (no document, or no message anywhere).
    lost = [t for t in not_final if latest.get(t, ("missing", 0))[0] == "missing" or messages_left == 0]
    stuck = [t for t in not_final if t not in lost]
    histogram: Counter[str] = Counter()
    duplicates = []
    phantom = []
    after_final = []
    overlapping = 0
    for task_id in ids:
        runs = executions.get(task_id, [])
        count = len(runs)
        histogram["0" if count == 0 else "1" if count == 1 else "2" if count == 2 else "3+"] += 1
        state = latest.get(task_id, ("missing", 0))[0]
        if state == "succeeded" and not any(e.outcome == "end" for e in runs):
            phantom.append(task_id)
        final_at = first_final.get(task_id)
        for e in runs:
            if final_at is not None and e.started - t0 > final_at:
                after_final.append(
                    {
                        "task": task_id,
                        "attempt": e.attempt,
                        "worker": e.worker_id,
                        "started_s": round(e.started - t0, 2),
                        "final_seen_s": final_at,
                    }
                )
        overlapping += sum(1 for a, b in zip(runs, runs[1:], strict=False) if a.ended is None or a.ended > b.started)
        pairs = _reruns(runs, planned[task_id] == 2)
        if not pairs:
            continue
        reruns = [
            {
                "attempt": rerun.attempt,
                "worker": rerun.worker_id,
                "after": f"{previous.worker_id} attempt {previous.attempt} ({previous.outcome})",
                "cause": _cause(previous, rerun, timeline, t0, republished.get(task_id), final_at) or "unexplained",
            }
            for previous, rerun in pairs
        ]
        duplicates.append({"task": task_id, "executions": count, "planned": planned[task_id], "reruns": reruns})
    not_succeeded = []
    for task_id in ids:
        state = latest.get(task_id, ("missing", 0))[0]
        if state in ("succeeded", "missing") or state not in FINAL:
            continue
        runs = executions.get(task_id, [])
        cut_short = [
            _cause(e, following, timeline, t0, None, None) or "unexplained"
            for e, following in zip(runs, [*runs[1:], None], strict=False)
            if e.outcome == "none"
        ]
        not_succeeded.append({"task": task_id, "state": state, "executions": len(runs), "cut_short_by": cut_short})
    unexplained_end = [t for t in not_succeeded if not t["cut_short_by"] or "unexplained" in t["cut_short_by"]]
    unexplained = [d for d in duplicates if any(r["cause"] == "unexplained" for r in d["reruns"])]
    by_cause = Counter(r["cause"].split(" ")[0].rstrip(":") for d in duplicates for r in d["reruns"])
    for event in timeline:  # what became of the task whose retry a cut aimed at
        if "trigger_task" in event:
            runs = executions.get(event["trigger_task"], [])
            event["trigger_task_executions"] = [f"attempt {e.attempt} on {e.worker_id}: {e.outcome}" for e in runs]
            event["trigger_task_state"] = latest.get(event["trigger_task"], ("missing", 0))[0]
    fault_counts = Counter(e["fault"] for e in timeline)
    final = sum(1 for task_id in ids if latest.get(task_id, ("missing", 0))[0] in FINAL)
    required = (
        "worker_sigkill",
        "producer_sigkill",
        "producer_rerun",
        "broker_restart",
        "store_sigstop",
        "broker_connection_cut",
    )
    checks = {
        "every_task_final": final == len(ids),
        "nothing_lost": not lost,
        "nothing_stuck": not stuck,
        "no_regressions": not regressions,
        "every_duplicate_explained": not unexplained,
        "every_unsuccessful_task_explained": not unexplained_end,
        "no_success_without_an_execution": not phantom,
        "every_fault_injected": all(fault_counts[f] > 0 for f in required),
        "no_harness_errors": not errors,
    }
    return {
        "tasks": len(ids),
        "final": final,
        "lost": len(lost),
        "stuck": len(stuck),
        "regressions": len(regressions),
        "duplicates": {
            "count": len(duplicates),
            "extra_executions": sum(len(d["reruns"]) for d in duplicates),
            "unexplained": len(unexplained),
            "by_cause": dict(by_cause),
            "items": duplicates[:200],
        },
        "faults": timeline,
        "pass": all(checks.values()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "checks": checks,
        "executions": dict(sorted(histogram.items())),
        "states": dict(states),
        "not_succeeded": not_succeeded[:50],
        "fault_counts": dict(fault_counts),
        "wall_s": round(wall_s, 1),
        "lost_ids": lost[:50],
        "stuck_ids": stuck[:50],
        "regression_events": regressions[:50],
        "phantom_successes": phantom[:50],
        "executions_after_final": {"count": len(after_final), "items": after_final[:100]},
        "overlapping_executions": overlapping,
        "messages_left": queue_messages,
        "producer_runs": producer_runs,
        "samples": {"ok": samples, "failed": failed_samples},
        "errors": errors,
        "plan": asdict(plan),
        "workers": "taskq-worker processes on this machine (one toxiproxy listener each in front of the broker)",
    }


def private_services(service_set: Any) -> ChaosServices:
    """`ChaosServices` from a `taskq_dev.services.ServiceSet` whose broker and store are private."""
    rabbitmq = service_set.ensure_rabbitmq()
    mongo = service_set.ensure_mongo()
    if rabbitmq.external or mongo.external:
        raise RuntimeError("the chaos run restarts the broker and stops the store: it needs private ones")

    def restart_broker() -> float:
        rabbitmq.stop()
        return float(rabbitmq.start())

    def store_pid() -> int | None:
        pid = mongo.process.pid
        return pid if pid is not None and process_start_ticks(pid) is not None else None

    return ChaosServices(
        amqp_url=rabbitmq.amqp_url,
        mongodb_uri=mongo.uri,
        management_base=rabbitmq.management_base,
        management_auth=rabbitmq.management_auth,
        vhost=rabbitmq.vhost,
        restart_broker=restart_broker,
        store_pid=store_pid,
        index_writes=mongo.index_writes,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        raise SystemExit(produce_main(sys.argv[2:]))
    raise SystemExit("usage: python -m taskq_dev.chaos produce SPECS [--pace S]")
