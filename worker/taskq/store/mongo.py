"""Task status documents and worker heartbeats in MongoDB (or FerretDB), through pymongo.

Called by the producer (queued documents), the worker (transitions, heartbeats), the CLI and HTTP
service (reads) and the operator (counts, heartbeats). Uses only what both MongoDB and FerretDB
support: no transactions, no change streams. pymongo errors become `taskq.errors` here.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from taskq.core.cancel import CancelResult, attempt_to_cancel, cancel_fence, cancel_fields
from taskq.core.document import Unpublished, conflict_reason, outbox_entry, queued_document, unpublished_from
from taskq.core.fencing import (
    admits,
    claim_document,
    claim_id,
    claim_to_check,
    claimed_fields,
    is_own_claim,
    outcome_fence,
    rolled_forward,
)
from taskq.core.message import TaskMessage, utcnow
from taskq.core.outcomes import RedeliveryCheck
from taskq.core.states import TaskState, allowed_sources
from taskq.core.storable import safe_text
from taskq.core.transitions import Transition
from taskq.errors import InvalidStoreURI, StoreRefused, StoreUnavailable, TaskqError, redact_url, scrub

T = TypeVar("T")
DUPLICATE_KEY = 11000
# FerretDB 1.x keeps one pooled SQLite/PostgreSQL connection per update of a bulk command until the
# command ends, and its pool holds 100 per database: the statements of all commands in flight, from
# every worker together, must stay under 100 or it deadlocks for good (seen with 10 workers sending
# 16-update bulks). Each FerretDB update costs milliseconds anyway (it scans the collection), so
# tiny chunks cost nothing there; MongoDB takes large ones.
FERRETDB_OPS_PER_BULK = 4
MONGODB_OPS_PER_BULK = 1000
_UNAVAILABLE = (AutoReconnect, ConnectionFailure, NetworkTimeout, ServerSelectionTimeoutError, ExecutionTimeout, WTimeoutError)


@dataclass(frozen=True)
class Submission:
    """What `record_submission` found: new ids, unconfirmed ones to publish again, known ones, conflicts."""

    fresh: set[str] = field(default_factory=set)
    republish: list[Unpublished] = field(default_factory=list)
    known: set[str] = field(default_factory=set)
    conflicts: dict[str, str] = field(default_factory=dict)


class TaskStore:
    """Reads and fenced writes of task documents; one instance per process is enough."""

    def __init__(self, uri: str, database: str = "taskq", *, timeout_ms: int = 5000) -> None:
        self._where = redact_url(uri)
        try:
            self._client: MongoClient[dict[str, Any]] = MongoClient(
                uri,
                serverSelectionTimeoutMS=timeout_ms,
                connectTimeoutMS=timeout_ms,
                socketTimeoutMS=max(timeout_ms * 3, 10_000),
                retryWrites=False,
                tz_aware=True,
                appname="taskq",
            )
        except (PyMongoError, ValueError, TypeError) as exc:  # pymongo validates the URI and its options here
            reason = safe_text(scrub(str(exc), uri), 300)
            raise InvalidStoreURI(f"invalid store URI {self._where}: {type(exc).__name__}: {reason}") from None
        db = self._client[database]
        self.tasks = db["tasks"]
        self.workers = db["workers"]
        self.outbox = db["outbox"]
        self.claims = db["claims"]
        self.cancels = db["cancels"]
        self._ferretdb: bool | None = None

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"store at {self._where} unavailable while {what}: {type(exc).__name__}") from None
        except (BSONError, OverflowError) as exc:
            # Raised by the BSON encoder before anything is sent: the document itself is the problem.
            raise StoreRefused(
                f"store cannot encode a document while {what}: {type(exc).__name__}: {safe_text(exc, 300)}"
            ) from None
        except PyMongoError as exc:
            raise TaskqError(f"store at {self._where} failed while {what}: {safe_text(exc, 500)}") from None

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with self._translated(what):
            return fn()

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""
        self._call("pinging", lambda: self._client.admin.command("ping"))

    def is_ferretdb(self) -> bool:
        """Whether the server is FerretDB (its `buildInfo` says so); asked once, then remembered.

        FerretDB 1.x runs a filter other than `{_id: <string>}` as a scan of the whole collection in
        Go, per operation: guarded writes and `$in` reads then cost time proportional to the number
        of documents. On FerretDB this adapter reads and writes by `_id` alone instead (see
        `apply_many`).
        """
        if self._ferretdb is None:
            info = self._call("asking the server version", lambda: self._client.admin.command("buildInfo"))
            self._ferretdb = "ferretdbVersion" in info or "ferretdb" in str(info.get("version", "")).lower()
        return self._ferretdb

    def ensure_indexes(self) -> None:
        """Create the indexes the CLI, HTTP service and operator queries use (idempotent)."""
        with self._translated("creating indexes"):
            self.tasks.create_index([("queue", ASCENDING), ("state", ASCENDING), ("updated_at", DESCENDING)])
            self.tasks.create_index([("state", ASCENDING), ("updated_at", DESCENDING)])
            self.workers.create_index([("queue", ASCENDING)])
            self.outbox.create_index([("created_at", ASCENDING)])
            self.claims.create_index([("task_id", ASCENDING)])
            self.cancels.create_index([("queue", ASCENDING), ("at", ASCENDING)])

    def close(self) -> None:
        self._client.close()

    # -- producer -----------------------------------------------------------------------------

    def insert_queued(self, messages: Sequence[TaskMessage], now: datetime) -> set[str]:
        """Write the outbox entries, then the `queued` documents; return the ids whose document was new.

        Existing documents are kept as they are (see `record_submission` for what a resubmission does).
        """
        return self.record_submission(messages, now).fresh

    def record_submission(self, messages: Sequence[TaskMessage], now: datetime) -> Submission:
        """Record messages about to be published: an outbox entry each (first), then the `queued` document.

        The entry goes first so that no crash leaves a document without a record of its pending
        publish; `mark_published` deletes it after the broker's confirm. For an id whose document
        exists already: the same task (name and queue) with an entry left from an unconfirmed
        publish and still `queued` is to be published again (with the body first recorded); the same
        task without one, or in any later state, was delivered and is only reported as known; another
        task under that id is a conflict.
        """
        if not messages:
            return Submission()
        entries = [outbox_entry(m, now) for m in messages]
        docs = [queued_document(m, now) for m in messages]
        with self._translated("recording submitted tasks"):
            new_entries = self._insert_new(self.outbox, entries)
            fresh = self._insert_new(self.tasks, docs)
            repeated = [m for m in messages if m.id not in fresh]
            if not repeated:
                return Submission(fresh=fresh)
            stored = self._documents_by_id(self.tasks, [m.id for m in repeated], {"name": 1, "queue": 1, "state": 1})
            known: set[str] = set()
            conflicts: dict[str, str] = {}
            again: list[str] = []
            delivered: list[str] = []
            for message in repeated:
                document = stored.get(message.id)
                reason = conflict_reason(document, message) if document is not None else None
                if reason is not None:
                    conflicts[message.id] = reason
                elif message.id in new_entries or document is None:
                    known.add(message.id)  # published before (its entry was gone), or purged meanwhile
                elif document.get("state") not in (TaskState.QUEUED.value, TaskState.SCHEDULED.value):
                    known.add(message.id)  # unconfirmed, but a worker has it: the message did arrive
                    delivered.append(message.id)
                else:
                    again.append(message.id)
            self._delete_outbox([task_id for task_id in [*known, *conflicts] if task_id in new_entries] + delivered)
            republish = [unpublished_from(e) for e in self._documents_by_id(self.outbox, again, None).values()]
        return Submission(fresh=fresh, republish=republish, known=known, conflicts=conflicts)

    def mark_published(self, task_ids: Iterable[str]) -> None:
        """The broker confirmed these tasks' messages: delete their outbox entries.

        One `$in` delete: on FerretDB it scans the outbox collection, which holds only what is
        unconfirmed right now (a few publish windows) plus what the sweeper has not sent again yet.
        """
        with self._translated("recording confirmed publishes"):
            self._delete_outbox(list(task_ids))

    def unpublished_before(self, cutoff: datetime, limit: int) -> builtins.list[tuple[Unpublished, TaskState | None]]:
        """Outbox entries older than `cutoff` (oldest first, at most `limit`) with their task's state.

        Not a query by `_id`: on FerretDB it scans the outbox collection (small: see `mark_published`);
        on MongoDB the `created_at` index serves it. The states are read by `_id`.
        """
        with self._translated("reading unpublished tasks"):
            found = self.outbox.find({"created_at": {"$lt": cutoff}}).sort("created_at", ASCENDING).limit(max(1, limit))
            entries = [unpublished_from(e) for e in found]
        states = self.states_of(e.task_id for e in entries)
        return [(entry, states.get(entry.task_id)) for entry in entries]

    def _insert_new(
        self,
        collection: Collection[dict[str, Any]],
        docs: builtins.list[dict[str, Any]],
        *,
        refused: type[TaskqError] = TaskqError,
    ) -> set[str]:
        """Insert `docs`, keeping existing ones as they are; the ids that were new."""
        ids = {d["_id"] for d in docs}
        try:
            collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            others = [err for err in errors if err.get("code") != DUPLICATE_KEY]
            if others:
                raise refused(f"store refused {len(others)} documents: {safe_text(others[0].get('errmsg'), 300)}") from None
            return ids - {docs[err["index"]]["_id"] for err in errors}
        return ids

    def _documents_by_id(
        self, collection: Collection[dict[str, Any]], ids: builtins.list[str], projection: dict[str, int] | None
    ) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        if self.is_ferretdb():
            found = (collection.find_one({"_id": task_id}, projection) for task_id in ids)
            return {d["_id"]: d for d in found if d is not None}
        return {d["_id"]: d for d in collection.find({"_id": {"$in": ids}}, projection)}

    def _delete_outbox(self, ids: builtins.list[str]) -> None:
        if ids:
            self.outbox.delete_many({"_id": {"$in": ids}})

    def requeue_dead(self, task_id: str, now: datetime) -> bool:
        """Administrative reset of a `dead` task to `queued` before its message is republished.

        The only way out of a final state, taken by `taskq requeue-dead` on an operator's request;
        False when the task is not dead (it is then left as it is).
        """
        with self._translated("requeueing a dead task"):
            document = self.tasks.find_one({"_id": task_id}, {"state": 1, "attempts": 1})
            if document is None or document.get("state") != TaskState.DEAD.value:
                return False
            result = self.tasks.update_one(
                {"_id": task_id, "state": TaskState.DEAD.value},
                {
                    "$set": {
                        "state": TaskState.QUEUED.value,
                        "updated_at": now,
                        f"timestamps.{TaskState.QUEUED.value}": now,
                        "fence": 0,
                    }
                },
            )
            # The message goes back as attempt 1: the earlier attempts' outcomes no longer stand.
            for attempt in range(1, max(int(document.get("attempts") or 0), 1) + 1):
                self.claims.delete_one({"_id": claim_id(task_id, attempt)})
        return result.modified_count == 1

    def cancel(self, task_id: str, now: datetime, *, reason: str | None = None) -> CancelResult | None:
        """Cancel a task that is not final: claim its current attempt's outcome as `cancelled`; None when there is no task.

        The claim races a worker's outcome of that attempt (one wins: `claim_outcomes`). Lost to a
        `retrying` outcome, the next attempt is claimed instead (bounded); lost to a final one, the
        task's state is reported with `cancelled=False`. See `taskq.core.cancel`.
        """
        document: dict[str, Any] | None = None
        for _ in range(5):
            with self._translated("reading a task to cancel"):
                document = self.tasks.find_one({"_id": task_id}, {"state": 1, "attempts": 1, "fence": 1, "queue": 1})
                if document is None:
                    return None
                claim = self._claims_ahead([document]).get(task_id)
            if claim is not None:
                document = rolled_forward(document, claim)
            attempt = attempt_to_cancel(document)
            if attempt is None:
                return CancelResult(task_id, False, TaskState(document["state"]))
            fields = {**cancel_fields(now, reason), "fence": cancel_fence(attempt)}
            transition = Transition(
                task_id, TaskState.CANCELLED, allowed_sources(TaskState.CANCELLED), fields, None, attempt, 1, "taskq-cancel"
            )
            if self.apply_many([transition])[0]:
                queue = str(document.get("queue") or "")
                # The marker workers read when they connect (a notice reaches only the connected ones).
                marker = {"_id": f"{task_id}#a{attempt}", "task_id": task_id, "attempt": attempt, "queue": queue, "at": now}
                with self._translated("recording a cancel marker"):
                    self.cancels.replace_one({"_id": marker["_id"]}, marker, upsert=True)
                return CancelResult(task_id, True, TaskState.CANCELLED, attempt, queue)
        state = document.get("state") if document is not None else None
        known = TaskState(state) if state in {s.value for s in TaskState} else TaskState.RUNNING
        return CancelResult(task_id, False, known)

    def recent_cancels(self, queue: str, since: datetime) -> builtins.list[tuple[str, int]]:
        """The (task id, attempt) pairs of `queue` cancelled since `since` (a worker reads them when it connects).

        The `cancels` collection holds one small marker per cancel; markers older than `since` are
        deleted here, so it stays small (on FerretDB both queries scan it).
        """
        with self._translated("reading cancel markers"):
            self.cancels.delete_many({"at": {"$lt": since}})
            found = self.cancels.find({"queue": queue, "at": {"$gte": since}}, {"task_id": 1, "attempt": 1})
            return [(str(d["task_id"]), int(d["attempt"])) for d in found]

    # -- transitions --------------------------------------------------------------------------

    def claim_outcomes(self, transitions: Sequence[Transition]) -> list[bool]:
        """Insert the outcome claims of `transitions` (outcomes only); per transition, whether it holds its claim.

        The claim's unique `_id` decides, on MongoDB and FerretDB alike (see `taskq.core.fencing`).
        A claim in place is held only when it is this writer's own (an earlier try whose reply was lost).
        """
        if not transitions:
            return []
        docs = [
            claim_document(t.task_id, t.attempt or 0, t.target, t.fields, worker=t.worker, epoch=t.epoch, now=utcnow())
            for t in transitions
        ]
        with self._translated("claiming task outcomes"):
            fresh = self._insert_new(self.claims, docs, refused=StoreRefused)
            held = [doc["_id"] in fresh for doc in docs]
            lost = [i for i, ok in enumerate(held) if not ok]
            if lost:
                found = self._documents_by_id(self.claims, [docs[i]["_id"] for i in lost], None)
                for i in lost:
                    claim = found.get(docs[i]["_id"])
                    t = transitions[i]
                    held[i] = claim is not None and is_own_claim(claim, t.target, t.worker, t.epoch)
        return held

    def apply(self, transition: Transition) -> bool:
        """Apply one transition; False when it was refused as stale."""
        return self.apply_many([transition])[0]

    def apply_many(self, transitions: Sequence[Transition]) -> list[bool]:
        """Apply transitions in one group commit; per transition, whether it was applied.

        Outcomes first claim their attempt (`claim_outcomes`): a held claim is the record, and the
        document is then written to match; a lost one is refused as stale. Starts and progress are
        written under their fence and source states: by a guarded filter on MongoDB, atomically;
        on FerretDB, which runs any filter but `{_id: ...}` as a scan and applies no update
        atomically anyway, by a check on the document read by `_id`, followed by a look at the
        attempt's claim that rolls the document forward when an outcome was claimed meanwhile.
        """
        if not transitions:
            return []
        outcomes = [i for i, t in enumerate(transitions) if t.is_outcome]
        held = dict(zip(outcomes, self.claim_outcomes([transitions[i] for i in outcomes]), strict=True))
        writes = [i for i in range(len(transitions)) if held.get(i, True)]
        chosen = [transitions[i] for i in writes]
        try:
            written = self._write_by_id(chosen) if self.is_ferretdb() else self._write_guarded(chosen)
        except StoreRefused:
            # Let the caller isolate the bad write: the claims of this try go, so that its retries claim again.
            self._release_claims([transitions[i] for i in outcomes if held[i]])
            raise
        applied = [held.get(i, False) for i in range(len(transitions))]
        for i, ok in zip(writes, written, strict=True):
            applied[i] = True if i in held else ok
        return applied

    def _release_claims(self, transitions: Sequence[Transition]) -> None:
        with self._translated("releasing outcome claims"):
            for t in transitions:
                self.claims.delete_one({"_id": claim_id(t.task_id, t.attempt or 0)})

    @staticmethod
    def _update(transition: Transition, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        update: dict[str, Any] = {"$set": {**transition.fields, **(extra or {})}}
        if transition.insert is not None:
            update["$setOnInsert"] = transition.insert
        return update

    @classmethod
    def _guarded_operation(cls, transition: Transition, token: str) -> UpdateOne:
        query: dict[str, Any] = {"_id": transition.task_id}
        if not transition.is_outcome:  # an outcome's claim stands for its sources
            query["state"] = {"$in": [s.value for s in transition.sources]}
        if transition.fence is not None:
            query["fence"] = {"$not": {"$gt": transition.fence}}
        return UpdateOne(query, cls._update(transition, {"write_token": token}), upsert=transition.insert is not None)

    def _write_guarded(self, transitions: Sequence[Transition]) -> list[bool]:
        """The MongoDB path: one bulk of guarded updates; a token per write tells which applied."""
        if not transitions:
            return []
        tokens = [uuid.uuid4().hex for _ in transitions]
        ops = [self._guarded_operation(t, tok) for t, tok in zip(transitions, tokens, strict=True)]
        done = 0
        with self._translated("recording task states"):
            for first in range(0, len(ops), MONGODB_OPS_PER_BULK):
                try:
                    result = self.tasks.bulk_write(ops[first : first + MONGODB_OPS_PER_BULK], ordered=False)
                    done += result.matched_count + result.upserted_count
                except BulkWriteError as exc:
                    self._raise_unless_duplicates(exc)
                    done = -len(ops)
            if done == len(ops):
                return [True] * len(ops)
            ids = [t.task_id for t in transitions]
            found = {d["_id"]: d.get("write_token") for d in self.tasks.find({"_id": {"$in": ids}}, {"write_token": 1})}
        return [found.get(t.task_id) == tok for t, tok in zip(transitions, tokens, strict=True)]

    @staticmethod
    def _raise_unless_duplicates(exc: BulkWriteError) -> None:
        errors = exc.details.get("writeErrors", [])
        if any(err.get("code") != DUPLICATE_KEY for err in errors):
            raise StoreRefused(f"store refused a task state write: {safe_text(errors[0].get('errmsg'), 300)}") from None

    def _write_by_id(self, transitions: Sequence[Transition]) -> list[bool]:
        """The FerretDB path: checks on documents read by `_id`, writes filtered by `_id` alone."""
        if not transitions:
            return []
        with self._translated("reading task fences"):
            standing = self._fences_of({t.task_id for t in transitions if not t.is_outcome})
        applied: list[bool] = []
        ops: list[UpdateOne] = []
        fenced: list[Transition] = []
        for transition in transitions:
            current = standing.get(transition.task_id)
            if transition.is_outcome:
                ok = True
            elif current is None:
                ok = transition.insert is not None  # rare: a message published without the producer API
            else:
                state, fence = current
                ok = admits(transition.fence if transition.fence is not None else fence, False, transition.sources, state, fence)
            if ok:
                ops.append(UpdateOne({"_id": transition.task_id}, self._update(transition), upsert=transition.insert is not None))
                standing[transition.task_id] = (transition.target, transition.fence or 0)
                if not transition.is_outcome and transition.attempt is not None:
                    fenced.append(transition)
            applied.append(ok)
        with self._translated("recording task states"):
            for first in range(0, len(ops), FERRETDB_OPS_PER_BULK):
                try:
                    self.tasks.bulk_write(ops[first : first + FERRETDB_OPS_PER_BULK], ordered=False)
                except BulkWriteError as exc:
                    self._raise_unless_duplicates(exc)
                    # A duplicate key here: the document appeared meanwhile; re-read what stands.
                    return self._refresh_flags(transitions, applied)
            self._roll_forward({(t.task_id, t.attempt or 0) for t in fenced})
        return applied

    def _fences_of(self, task_ids: Iterable[str]) -> dict[str, tuple[TaskState, int]]:
        found = (self.tasks.find_one({"_id": task_id}, {"state": 1, "fence": 1}) for task_id in task_ids)
        return {d["_id"]: (TaskState(d["state"]), int(d.get("fence") or 0)) for d in found if d is not None}

    def _roll_forward(self, attempts: Iterable[tuple[str, int]]) -> dict[str, dict[str, Any]]:
        """Write the claimed outcome of each (task, attempt) that has one over its document, if it lags; the claims found.

        Only a document whose fence is below the claim's outcome is written (a guarded filter on
        MongoDB; a check on the fence read by `_id` on FerretDB): never over a later attempt.
        """
        wanted = {claim_id(task_id, attempt): task_id for task_id, attempt in attempts}
        claims = {str(c["task_id"]): c for c in self._documents_by_id(self.claims, list(wanted), None).values()}
        if not claims:
            return {}
        ferretdb = self.is_ferretdb()
        standing = self._fences_of(claims) if ferretdb else {}
        for task_id, claim in claims.items():
            ahead = outcome_fence(int(claim["attempt"]))
            if ferretdb:
                current = standing.get(task_id)
                if current is None or current[1] >= ahead:
                    continue
                self.tasks.update_one({"_id": task_id}, {"$set": claimed_fields(claim)})
            else:
                self.tasks.update_one({"_id": task_id, "fence": {"$not": {"$gte": ahead}}}, {"$set": claimed_fields(claim)})
        return claims

    def _refresh_flags(self, transitions: Sequence[Transition], applied: list[bool]) -> list[bool]:
        states = self.states_of({t.task_id for t in transitions})
        return [ok and states.get(t.task_id) == t.target for t, ok in zip(transitions, applied, strict=True)]

    def note_redelivery(self, task_id: str, attempt: int, *, count: bool = True) -> RedeliveryCheck:
        """Count one more delivery of attempt `attempt`; what the redelivered message finds.

        Classic queues do not count deliveries, so the worker counts redeliveries in the document
        (`redeliveries.a<attempt>`), filtered by `_id` alone (FerretDB runs that without a scan; it has no
        projection for findAndModify, so the whole document comes back: redeliveries are rare). A task
        with no document has no count. When the attempt has an outcome claim already, the attempt is
        over (`claimed` says how): the document is rolled forward to it if it lags.
        """
        key = f"a{int(attempt)}"
        with self._translated("counting a redelivery"):
            if count:
                found = self.tasks.find_one_and_update(
                    {"_id": task_id}, {"$inc": {f"redeliveries.{key}": 1}}, return_document=ReturnDocument.AFTER
                )
            else:
                found = self.tasks.find_one({"_id": task_id})
            claim = self._roll_forward([(task_id, attempt)]).get(task_id)
        claimed = TaskState(claim["state"]) if claim is not None else None
        if found is None:
            return RedeliveryCheck(claimed, 1, claimed)
        counts = found.get("redeliveries") or {}
        earlier = counts.get(key, 0) if isinstance(counts, dict) else 0
        state = claim["state"] if claim is not None else found.get("state")
        known = TaskState(state) if state in {s.value for s in TaskState} else None
        return RedeliveryCheck(known, int(earlier) + 1, claimed)

    # -- reads --------------------------------------------------------------------------------

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The document of one task, or None; as its outcome claim says when the document lags behind it."""
        with self._translated("reading a task"):
            document = self.tasks.find_one({"_id": task_id}, {"write_token": 0})
            if document is None:
                return None
            claim = self._claims_ahead([document]).get(task_id)
        return rolled_forward(document, claim) if claim is not None else document

    def _claims_ahead(self, documents: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The outcome claims that are ahead of these documents (see `taskq.core.fencing.claim_to_check`)."""
        wanted: dict[str, str] = {}
        for document in documents:
            attempt = claim_to_check(document)
            if attempt is not None:
                wanted[claim_id(str(document["_id"]), attempt)] = str(document["_id"])
        found = self._documents_by_id(self.claims, list(wanted), None)
        return {wanted[key]: claim for key, claim in found.items()}

    def states_of(self, task_ids: Iterable[str]) -> dict[str, TaskState]:
        """The current state of each of `task_ids` that has a document (its claimed outcome if the document lags)."""
        ids = list(task_ids)
        if not ids:
            return {}
        projection = {"state": 1, "attempts": 1}
        with self._translated("reading task states"):
            documents = list(self._documents_by_id(self.tasks, ids, projection).values())
            claims = self._claims_ahead(documents)
        states = {d["_id"]: TaskState(d["state"]) for d in documents}
        states.update({task_id: TaskState(claim["state"]) for task_id, claim in claims.items()})
        return states

    def list(
        self,
        *,
        queue: str | None = None,
        state: TaskState | None = None,
        limit: int = 50,
        name: str | None = None,
        since: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The most recently updated tasks, optionally of one queue, state and/or task name, updated at or after `since`."""
        query: dict[str, Any] = {}
        if queue:
            query["queue"] = queue
        if state:
            query["state"] = state.value
        if name:
            query["name"] = name
        if since is not None:
            query["updated_at"] = {"$gte": since}
        with self._translated("listing tasks"):
            cursor = self.tasks.find(query, {"write_token": 0, "args": 0, "kwargs": 0, "result": 0})
            return list(cursor.sort("updated_at", DESCENDING).limit(max(1, min(limit, 10_000))))

    def counts_by_state(self, queue: str | None = None) -> dict[str, int]:
        """How many tasks are in each state (every state present, zeros included)."""
        pipeline: list[dict[str, Any]] = []
        if queue:
            pipeline.append({"$match": {"queue": queue}})
        pipeline.append({"$group": {"_id": "$state", "n": {"$sum": 1}}})
        counts = {state.value: 0 for state in TaskState}
        with self._translated("counting tasks"):
            for row in self.tasks.aggregate(pipeline):
                if row["_id"] in counts:
                    counts[row["_id"]] = int(row["n"])
        return counts

    def counts_by_queue_and_state(self, queues: Sequence[str]) -> dict[str, dict[str, int]]:
        """`counts_by_state` for many queues in one aggregation (used by the operator's tick)."""
        result = {q: {state.value: 0 for state in TaskState} for q in queues}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"queue": {"$in": list(queues)}}},
            {"$group": {"_id": {"q": "$queue", "s": "$state"}, "n": {"$sum": 1}}},
        ]
        with self._translated("counting tasks"):
            for row in self.tasks.aggregate(pipeline):
                key = row["_id"]
                if key["q"] in result and key["s"] in result[key["q"]]:
                    result[key["q"]][key["s"]] = int(row["n"])
        return result

    def open_since(
        self, queues: Sequence[str], states: Iterable[TaskState], cutoff: datetime, limit: int
    ) -> builtins.list[dict[str, Any]]:
        """Tasks of `queues` in `states` last written before `cutoff`, oldest first, at most `limit` (the stuck sweep).

        Served by the (queue, state, updated_at) index on MongoDB; FerretDB scans the tasks
        collection, which is why the operator runs this sweep rarely (`taskq.recovery`).
        """
        query = {"queue": {"$in": list(queues)}, "state": {"$in": [s.value for s in states]}, "updated_at": {"$lt": cutoff}}
        with self._translated("reading stuck tasks"):
            found = self.tasks.find(query, {"write_token": 0, "result": 0})
            return list(found.sort("updated_at", ASCENDING).limit(max(1, limit)))

    def note_recovery(self, document: dict[str, Any], now: datetime, reason: str) -> bool:
        """Record that a stuck task is published again; False when it was written meanwhile (no longer stuck).

        Guarded on the state and write time read by the sweep (a filter on MongoDB; a check on the
        document read by `_id` on FerretDB). The write time moves on, so the next sweep waits again.
        """
        task_id, state, seen = document["_id"], document.get("state"), document.get("updated_at")
        update = {
            "$set": {"updated_at": now, "recovered_at": now, "recovery_reason": safe_text(reason, 500)},
            "$inc": {"recoveries": 1},
        }
        with self._translated("recording a recovery"):
            if self.is_ferretdb():
                current = self.tasks.find_one({"_id": task_id}, {"state": 1, "updated_at": 1})
                if current is None or current.get("state") != state or current.get("updated_at") != seen:
                    return False
                return self.tasks.update_one({"_id": task_id}, update).modified_count == 1
            return self.tasks.update_one({"_id": task_id, "state": state, "updated_at": seen}, update).modified_count == 1

    def delete_queue_tasks(self, queue: str) -> int:
        """Remove the documents of one queue's tasks and their outcome claims; returns how many tasks."""
        with self._translated("purging tasks"):
            ids = [d["_id"] for d in self.tasks.find({"queue": queue}, {"_id": 1})]
            deleted = self.tasks.delete_many({"queue": queue}).deleted_count
            for first in range(0, len(ids), 1000):
                self.claims.delete_many({"task_id": {"$in": ids[first : first + 1000]}})
        return int(deleted)

    def expire_finished(self, queue: str, before: datetime, *, limit: int = 1000) -> int:
        """Delete up to `limit` final tasks of `queue` last written before `before`, and their outcome claims.

        Retention (`spec.tasks.resultTTLSeconds`, `TASKQ_RESULT_TTL`): run by the operator's sweep, since
        FerretDB 1.x implements no TTL index (`expireAfterSeconds` is refused) and one TTL index could
        not hold a TTL per queue anyway. A final document is not written again, so `updated_at` is its
        finish time. MongoDB serves the selection from the `queue, state, updated_at` index; FerretDB
        scans the collection (hence the sweep's long interval). Returns how many tasks were deleted.
        """
        finals = sorted(s.value for s in TaskState if s.is_final)
        query = {"queue": queue, "state": {"$in": finals}, "updated_at": {"$lt": before}}
        with self._translated("expiring finished tasks"):
            ids = [d["_id"] for d in self.tasks.find(query, {"_id": 1}).limit(max(1, limit))]
            if not ids:
                return 0
            # The state is checked again in the delete: a task retried meanwhile is `queued`, and kept
            # with its claims (only the claims of tasks whose document is gone are deleted).
            deleted = self.tasks.delete_many({"_id": {"$in": ids}, "state": {"$in": finals}}).deleted_count
            kept = set(self._documents_by_id(self.tasks, ids, {"_id": 1})) if deleted < len(ids) else set()
            gone = [task_id for task_id in ids if task_id not in kept]
            if gone:
                self.claims.delete_many({"task_id": {"$in": gone}})
        return int(deleted)

    # -- worker heartbeats --------------------------------------------------------------------

    def heartbeat(
        self,
        worker_id: str,
        queue: str,
        *,
        inflight: int,
        processed: int,
        started_at: datetime,
        now: datetime,
        pool: str | None = None,
    ) -> None:
        """Record that `worker_id` is alive and how many tasks it holds unacked right now (and its pool kind)."""
        fields: dict[str, Any] = {
            "queue": queue,
            "inflight": inflight,
            "processed": processed,
            "heartbeat_at": now,
            "started_at": started_at,
        }
        if pool is not None:
            fields["pool"] = pool
        with self._translated("recording a heartbeat"):
            self.workers.update_one({"_id": worker_id}, {"$set": fields}, upsert=True)

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that shut down cleanly."""
        with self._translated("removing a worker"):
            self.workers.delete_one({"_id": worker_id})

    def live_workers(self, queues: Sequence[str], since: datetime) -> builtins.list[dict[str, Any]]:
        """Heartbeats newer than `since` of workers consuming `queues`."""
        with self._translated("reading heartbeats"):
            return list(self.workers.find({"queue": {"$in": list(queues)}, "heartbeat_at": {"$gte": since}}))

    # -- dashboard reads and actions (taskq.http.dashboard) ---------------------------------------
    # Each read is meant to be served by an index on MongoDB (named per method); FerretDB 1.x runs any
    # filter other than `{_id: <string>}` as a scan of the collection, so there they scan regardless.

    def attempt_claims(self, task_id: str, attempts: int, limit: int = 50) -> dict[int, dict[str, Any]]:
        """The outcome claims of attempts 1..`attempts` of one task (the last `limit`), by attempt.

        One read by `_id` per attempt on FerretDB, one `$in` over `_id` on MongoDB (`_documents_by_id`).
        An attempt without a claim has no decided outcome (running, or its claim was dropped by an
        administrative retry or requeue).
        """
        first = max(1, attempts - max(1, limit) + 1)
        ids = [claim_id(task_id, attempt) for attempt in range(first, attempts + 1)]
        with self._translated("reading outcome claims"):
            found = self._documents_by_id(self.claims, ids, None)
        return {int(claim.get("attempt") or 0): claim for claim in found.values()}

    def heartbeats(self, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        """Every worker's last heartbeat, by worker id (the collection holds one document per worker)."""
        with self._translated("reading heartbeats"):
            return list(self.workers.find({}).sort("_id", ASCENDING).limit(max(1, limit)))

    def retry_finished(self, message: TaskMessage, now: datetime) -> bool:
        """Administrative retry of a `failed` or `dead` task as `message` (a first attempt again).

        Like a submission, the outbox entry goes first; then the document is reset to `queued` (its
        error and timestamps kept until the new attempt writes its own). The caller publishes
        `message` and calls `mark_published`; an unconfirmed publish is left to the sweeper. False,
        and no entry left, when the task is in neither state.
        """
        final = [TaskState.FAILED.value, TaskState.DEAD.value]
        with self._translated("retrying a task"):
            document = self.tasks.find_one({"_id": message.id}, {"state": 1, "attempts": 1})
            if document is None or document.get("state") not in final:
                return False
            self.outbox.replace_one({"_id": message.id}, outbox_entry(message, now), upsert=True)
            result = self.tasks.update_one(
                {"_id": message.id, "state": {"$in": final}},
                {
                    "$set": {
                        "state": TaskState.QUEUED.value,
                        "updated_at": now,
                        f"timestamps.{TaskState.QUEUED.value}": now,
                        "fence": 0,
                    }
                },
            )
            if result.modified_count != 1:
                self._delete_outbox([message.id])
                return False
            # As in `requeue_dead`: the message runs as attempt 1 again, earlier attempts' outcome claims no longer stand.
            for attempt in range(1, max(int(document.get("attempts") or 0), 1) + 1):
                self.claims.delete_one({"_id": claim_id(message.id, attempt)})
        return True
