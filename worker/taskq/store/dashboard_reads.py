"""The dashboard's store reads that stay bounded at any collection size, on FerretDB 1.x and on MongoDB.

Called by `taskq.http.dashboard` (and by the tests that prove each query's plan with `explain`).
A page load reads only by `_id`: `{_id: <string>}` per document on FerretDB (the one filter its
SQLite backend pushes down), one `$in` over the `_id` index on MongoDB. The one read that visits
every task is `scan_list_fields`, run in the background by `taskq.http.dashboard.catalog`, never
while a page waits beyond its budget: an unfiltered, unsorted find that both stores stream. Its
result is saved by `_id` (`save_summaries`) so that a restarted API process starts from it
(`load_summaries`) instead of from nothing.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from taskq.core.catalog import Summary
from taskq.store.mongo import TaskStore

SCAN_COMMENT = "taskq-dashboard-scan"
SCAN_BATCH = 2000
LIST_HIDDEN = {"write_token": 0, "args": 0, "kwargs": 0, "result": 0, "error.traceback": 0, "redeliveries": 0}


def scan_list_fields(store: TaskStore, seen: Callable[[int], None] | None = None) -> Iterator[Summary]:
    """Every task's (id, state, queue, name, updated_at), in the store's natural order, in batches.

    No filter, no sort and no skip: FerretDB streams its table (nothing to push down, nothing
    sorted in memory), MongoDB its collection. `seen` is told the running count every batch.
    """
    fields = {"state": 1, "queue": 1, "name": 1, "updated_at": 1}
    with store._translated("scanning the task list"):
        cursor = store.tasks.find({}, fields, batch_size=SCAN_BATCH, comment=SCAN_COMMENT)
        count = 0
        for document in cursor:
            count += 1
            if seen is not None and count % SCAN_BATCH == 0:
                seen(count)
            at = document.get("updated_at")
            yield (
                str(document["_id"]),
                str(document.get("state") or ""),
                str(document.get("queue") or ""),
                str(document.get("name") or ""),
                at if isinstance(at, datetime) else None,
            )
        if seen is not None:
            seen(count)


def tasks_by_id(store: TaskStore, ids: Sequence[str], projection: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """The documents of `ids` that exist, by id: one `{_id: id}` read each on FerretDB, one `$in` on MongoDB."""
    if not ids:
        return {}
    wanted = LIST_HIDDEN if projection is None else projection
    with store._translated("reading tasks by id"):
        return store._documents_by_id(store.tasks, list(ids), wanted)


def explain_find(store: TaskStore, collection: str, query: dict[str, Any], *, limit: int = 0) -> dict[str, Any]:
    """The server's `explain` of a find (queryPlanner): FerretDB adds filterPushdown/sortPushdown/limitPushdown."""
    command: dict[str, Any] = {"find": collection, "filter": query}
    if limit:
        command["limit"] = limit
    with store._translated("explaining a query"):
        return dict(store.tasks.database.command("explain", command, verbosity="queryPlanner"))


# -- the saved task list: the last scan's summaries, read back by `_id` when an API process starts ------

SAVED = "dashboard_catalog"
SAVED_CHUNK = 50_000  # ~1 MB compressed
_HEAD = "head"
# One compressed JSON value per chunk: FerretDB 1.x stores no nested arrays, and it decodes a document value by value
# (100,000 entries as arrays of strings took 22.7 s to read back here; one binary value each chunk takes no time).
_FORMAT = "json-zlib-1"


def _packed(part: Sequence[Summary]) -> bytes:
    rows = [[s[0], s[1], s[2], s[3], s[4].timestamp() if s[4] else None] for s in part]
    return zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 1)


def _unpacked(chunk: dict[str, Any]) -> list[Summary] | None:
    data = chunk.get("data")
    if chunk.get("format") != _FORMAT or not isinstance(data, bytes):
        return None
    try:
        rows = json.loads(zlib.decompress(data))
    except (zlib.error, ValueError):
        return None
    summaries: list[Summary] = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 5:
            return None
        task_id, state, queue, name, stamp = row
        at = datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) else None
        summaries.append((str(task_id), str(state), str(queue), str(name), at))
    return summaries


def save_summaries(store: TaskStore, summaries: Sequence[Summary], taken_at: datetime, took_s: float) -> int:
    """Save one scan's summaries in chunks of `SAVED_CHUNK` (a new generation), then point the head at them.

    Every write is by `_id` (inserts, the head's replace, the old generation's deletes), so it is
    cheap on FerretDB too. Two API processes saving at once each write their own generation; the
    head names one complete one. Returns the number of chunks written.
    """
    generation = uuid.uuid4().hex[:12]
    collection = store.tasks.database[SAVED]
    chunks = [
        {"_id": f"{generation}:{n:05d}", "format": _FORMAT, "data": _packed(part)}
        for n, part in enumerate(summaries[first : first + SAVED_CHUNK] for first in range(0, len(summaries), SAVED_CHUNK))
    ]
    with store._translated("saving the task list"):
        for chunk in chunks:
            collection.insert_one(chunk)
        head = {"generation": generation, "chunks": len(chunks), "count": len(summaries), "taken_at": taken_at, "took_s": took_s}
        previous = collection.find_one_and_replace({"_id": _HEAD}, {"_id": _HEAD, **head}, upsert=True)
        if previous is not None:
            for n in range(int(previous.get("chunks") or 0)):
                collection.delete_one({"_id": f"{previous.get('generation')}:{n:05d}"})
    return len(chunks)


def load_summaries(store: TaskStore) -> tuple[list[Summary], datetime, float] | None:
    """The saved summaries with the time their scan began and how long it took; None when none are saved (or incomplete)."""
    collection = store.tasks.database[SAVED]
    with store._translated("reading the saved task list"):
        head = collection.find_one({"_id": _HEAD})
        if head is None or not isinstance(head.get("taken_at"), datetime):
            return None
        summaries: list[Summary] = []
        for n in range(int(head.get("chunks") or 0)):
            chunk = collection.find_one({"_id": f"{head.get('generation')}:{n:05d}"})
            if chunk is None:
                return None  # replaced meanwhile by another process's save: scan instead
            rows = _unpacked(chunk)
            if rows is None:
                return None  # not written by this version: scan instead
            summaries.extend(rows)
    return summaries, head["taken_at"], float(head.get("took_s") or 0.0)
