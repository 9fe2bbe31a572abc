"""The store's ceiling for taskq's writes (`bench/worker.py` imports it): what a no-op task costs the store, replayed bare.

`commands_per_task` turns the command counts of a traced taskq-worker run (`bench/storetrace`, a
pymongo command listener loaded through PYTHONPATH) into the list of store commands one task
causes: per (command, collection, filter kind) the commands and statements per task, the
statements per command (the batching the worker achieved) and the threads that sent them (the
worker's concurrent writers). Heartbeats and connection checks are listed apart, not per task.

`measure_ceiling` then applies the same writes with a bare pymongo loop to a fresh database of the
same store, with as many documents as the worker's run had: per batch of tasks one `insert_many`
of outcome claims (the `claims` collection), the fence reads by `_id` and the claim reads by `_id`
of the tasks whose start was written (at the traced rate per task), and the `upsert` updates by
`_id` of the task documents, `ops_per_bulk` to an `update` command; `writers` threads, each with
its own batches. The documents are built by taskq's pure core (`taskq.core`), so their fields and
sizes are the worker's; the I/O is pymongo's alone, with no taskq code in between.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient, UpdateOne

from taskq.core.document import queued_document
from taskq.core.fencing import claim_document
from taskq.core.message import TaskMessage, new_task_id
from taskq.core.states import TaskState
from taskq.core.transitions import finish

PER_TASK_COLLECTIONS = ("tasks", "claims", "outbox")
WORKER_ID = "bench-ceiling"


def commands_per_task(rows: list[dict[str, Any]], tasks: int) -> dict[str, Any]:
    """The traced commands of a worker run, per task: what a no-op task costs the store.

    `rows` are the listener's counts (command, collection, shape, thread, commands, statements);
    `tasks` the outcomes the worker recorded over the traced run.
    """
    per_task: dict[str, dict[str, Any]] = {}
    other: dict[str, int] = {}
    writers: set[str] = set()
    for row in rows:
        if row["collection"] in PER_TASK_COLLECTIONS:
            key = " ".join(part for part in (row["command"], row["collection"], row["shape"]) if part)
            entry = per_task.setdefault(key, {"commands": 0, "statements": 0, "threads": set()})
            entry["commands"] += row["commands"]
            entry["statements"] += row["statements"]
            entry["threads"].add(row["thread"])
            if row["command"] in ("insert", "update", "delete"):
                writers.add(row["thread"])
        else:
            key = " ".join(part for part in (row["command"], row["collection"] or "-", row["thread"]) if part)
            other[key] = other.get(key, 0) + row["commands"]
    listed = {
        key: {
            "commands_per_task": round(entry["commands"] / tasks, 4) if tasks else None,
            "statements_per_task": round(entry["statements"] / tasks, 4) if tasks else None,
            "statements_per_command": round(entry["statements"] / entry["commands"], 2) if entry["commands"] else None,
            "threads": sorted(entry["threads"]),
        }
        for key, entry in sorted(per_task.items(), key=lambda item: -item[1]["commands"])
    }
    return {
        "tasks": tasks,
        "per_task": listed,
        "round_trips_per_task": round(sum(e["commands"] for e in per_task.values()) / tasks, 3) if tasks else None,
        "writer_threads": sorted(writers),
        "writers": max(1, len(writers)),
        "not_per_task": other,
    }


def _rate(mix: dict[str, Any], key: str, field: str = "statements_per_task") -> float:
    entry = mix["per_task"].get(key)
    return float(entry[field]) if entry and entry.get(field) is not None else 0.0


@dataclass(frozen=True)
class CeilingRun:
    """One configuration of the bare loop and what it reached."""

    batch: int
    ops_per_bulk: int
    writers: int
    tps: float
    tasks: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "ops_per_bulk": self.ops_per_bulk,
            "writers": self.writers,
            "tps": round(self.tps, 1),
            "tasks": self.tasks,
            "seconds": round(self.seconds, 2),
        }


def _messages(queue: str, n: int, now: datetime) -> list[TaskMessage]:
    return [TaskMessage(id=new_task_id(), name="noop", args=[i], queue=queue, created_at=now) for i in range(n)]


def measure_ceiling(
    mongodb_uri: str,
    index_writes: Callable[[str], object],
    mix: dict[str, Any],
    *,
    documents: int,
    batch: int,
    ops_per_bulk: int,
    writers: int,
    seconds: float,
) -> CeilingRun:
    """Tasks/s of a bare pymongo loop applying the writes of `mix` (from `commands_per_task`) for `seconds`.

    A fresh database gets `documents` queued task documents and the same write index the worker's
    run got (before its `claims` collection exists, as in the worker's run); the loop then records
    outcomes of those tasks, `batch` tasks to a claim insert, in `writers` threads, and stops after
    `seconds` or when the documents run out. The database is dropped afterwards.
    """
    database = f"bench_ceiling_{uuid.uuid4().hex[:6]}"
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, tz_aware=True, retryWrites=False, maxPoolSize=writers + 2)
    db = client[database]
    now = datetime.now(UTC)
    messages = _messages("bench-ceiling", documents, now)
    docs = [queued_document(m, now) for m in messages]
    for first in range(0, len(docs), 500):
        db.tasks.insert_many(docs[first : first + 500], ordered=False)
    db.outbox.insert_one({"_id": "x"})
    db.outbox.delete_one({"_id": "x"})
    index_writes(database)
    # Per task, from the trace: starts written (each costs a fence read, an update and a claim read).
    fence_reads = _rate(mix, "find tasks by _id")
    claim_reads = _rate(mix, "find claims by _id")
    updates = max(1.0, _rate(mix, "update tasks upsert") + _rate(mix, "update tasks"))
    claims_inserted = _rate(mix, "insert claims") or 1.0
    batches = iter([messages[i : i + batch] for i in range(0, len(messages), batch)])
    lock = threading.Lock()
    done = [0]
    errors: list[str] = []
    stop_at = [0.0]

    def one_batch(chunk: list[TaskMessage], carry: dict[str, float]) -> None:
        stamp = datetime.now(UTC)
        # Fractional rates per task are carried over from batch to batch, so the mix is kept on average.
        carry["fence"] += fence_reads * len(chunk)
        carry["claim"] += claim_reads * len(chunk)
        carry["extra"] += (updates - 1.0) * len(chunk)
        starts, carry["fence"] = int(carry["fence"]), carry["fence"] - int(carry["fence"])
        reads, carry["claim"] = int(carry["claim"]), carry["claim"] - int(carry["claim"])
        extra, carry["extra"] = int(carry["extra"]), carry["extra"] - int(carry["extra"])
        ops: list[UpdateOne] = []
        claims: list[dict[str, Any]] = []
        for message in chunk:
            transition = finish(message, TaskState.SUCCEEDED, WORKER_ID, stamp, started_at=stamp, start_recorded=False)
            update: dict[str, Any] = {"$set": transition.fields}
            if transition.insert is not None:
                update["$setOnInsert"] = transition.insert
            ops.append(UpdateOne({"_id": message.id}, update, upsert=True))
            claims.append(
                claim_document(message.id, 1, TaskState.SUCCEEDED, transition.fields, worker=WORKER_ID, epoch=1, now=stamp)
            )
        for message in chunk[:starts]:
            db.tasks.find_one({"_id": message.id}, {"state": 1, "fence": 1})
        start_ops = [
            UpdateOne({"_id": m.id}, {"$set": {"state": "running", "updated_at": stamp, "fence": 2}}, upsert=True)
            for m in chunk[:extra]
        ]
        for first in range(0, len(start_ops), ops_per_bulk):
            db.tasks.bulk_write(start_ops[first : first + ops_per_bulk], ordered=False)
        for message in chunk[:reads]:
            db.claims.find_one({"_id": f"{message.id}#a1"})
        if claims_inserted:
            db.claims.insert_many(claims, ordered=False)
        for first in range(0, len(ops), ops_per_bulk):
            db.tasks.bulk_write(ops[first : first + ops_per_bulk], ordered=False)

    def writer() -> None:
        carry = {"fence": 0.0, "claim": 0.0, "extra": 0.0}
        try:
            while time.perf_counter() < stop_at[0]:
                with lock:
                    chunk = next(batches, None)
                if chunk is None:
                    return
                one_batch(chunk, carry)
                with lock:
                    if time.perf_counter() <= stop_at[0]:
                        done[0] += len(chunk)
        except Exception as exc:  # noqa: BLE001 - reported with the figure, the run goes on
            errors.append(f"{type(exc).__name__}: {exc}"[:300])

    try:
        started = time.perf_counter()
        stop_at[0] = started + seconds
        threads = [threading.Thread(target=writer, name=f"ceiling-writer-{i}") for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 120)
        elapsed = min(time.perf_counter(), stop_at[0]) - started
    finally:
        client.drop_database(database)
        client.close()
    if errors:
        raise RuntimeError(f"store ceiling loop failed: {errors[0]}")
    return CeilingRun(batch, ops_per_bulk, writers, done[0] / elapsed if elapsed > 0 else 0.0, done[0], elapsed)


def ceiling_configurations(mix: dict[str, Any], worker_ops_per_bulk: int) -> list[tuple[int, int]]:
    """(batch, ops per update command) to try: the worker's own batching, then bigger batches and bulks.

    FerretDB 1.x deadlocks when the statements of all update commands in flight reach 100, so a bulk
    stays under 100 / writers statements.
    """
    observed = mix["per_task"].get("insert claims", {}).get("statements_per_command") or 1
    writers = int(mix.get("writers", 1))
    widest = max(worker_ops_per_bulk, math.floor(99 / writers))
    configurations = [(max(1, round(observed)), worker_ops_per_bulk), (256, worker_ops_per_bulk), (256, min(64, widest))]
    return list(dict.fromkeys(itertools.chain(configurations)))
