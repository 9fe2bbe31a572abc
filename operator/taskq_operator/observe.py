"""Observe many TaskQueues at once: one batch of reads per broker and per store, shared by all.

Per broker: passive declares for every due queue, pipelined (exact ready counts and consumers),
plus one management-API request per vhost (cached for the statistics interval). Per store: one
heartbeat query (fresh in-flight counts) and, less often, one task-count aggregation. Which unacked
figure to trust, and whether a reading is actionable, is the pure rule `taskq_operator.core.measure`
(heartbeats, else the management API served from a cache refreshed in the background so a slow
management API never delays a tick, else nothing when no consumer could hold work).

Each broker's and each store's batch runs in its own pool thread and the tick waits for them at most
`OBSERVE_TIMEOUT_S` (`taskq_operator.bounded`): a broker that accepts connections and never answers, or a
store whose replica set cannot be reached, costs the other TaskQueues that long once, then nothing until
it answers again; its own TaskQueues get no observation (the policy holds) or no heartbeats.

Called by `taskq_operator.scaler` once per tick, in a worker thread (everything here blocks), and by
`taskq_operator.reconcile` (declares, also in a worker thread): the observer maps are guarded by a lock.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskq.errors import TaskqError, redact_url
from taskq_operator.adapters.broker import BrokerObserver, ManagementFigures, ReadyCount
from taskq_operator.adapters.store import StoreObserver, WorkerLoad
from taskq_operator.bounded import Bounded, Outcome
from taskq_operator.core.measure import SOURCE_NONE, Sources, measure
from taskq_operator.core.policy import Observation

TASK_COUNTS_EVERY_S = 10.0
OBSERVE_TIMEOUT_S = 2.0
"""How long a tick waits for one broker's or store's reads (normally milliseconds); later answers are not waited for."""
log = logging.getLogger("taskq_operator.observe")


@dataclass(frozen=True)
class Target:
    """One TaskQueue to observe: its queue and which broker and store it uses (credentials inside)."""

    queue: str
    amqp_url: str
    management_url: str | None
    mongodb_uri: str
    database: str

    @property
    def broker_key(self) -> tuple[str, str | None]:
        return self.amqp_url, self.management_url

    @property
    def store_key(self) -> tuple[str, str]:
        return self.mongodb_uri, self.database


@dataclass(frozen=True)
class Reading:
    """The observation of one queue (None when its broker could not be read) and where it came from."""

    observation: Observation | None
    source: str
    error: str | None = None
    loads: WorkerLoad = field(default_factory=WorkerLoad)
    task_counts: dict[str, int] | None = None
    store_error: str | None = None
    """Why the store's heartbeats could not be read this tick (None: read; `loads` are then complete)."""
    late: bool = False
    """The broker's batch was still running when the tick stopped waiting for it (no error yet): no answer,
    which is not yet evidence that the broker is down (the scaler counts such ticks)."""


@dataclass(frozen=True)
class StoreBatch:
    """One store's reads for one tick: heartbeats by queue (None when unreadable) and task counts."""

    loads: dict[str, WorkerLoad] | None
    counts: dict[str, dict[str, int]] | None
    error: str | None


@dataclass(frozen=True)
class BrokerBatch:
    """One broker's reads for one tick: passive declares and the management figures cached for its vhost."""

    ready: dict[str, ReadyCount | None]
    management: dict[str, ManagementFigures]
    management_age_s: float | None
    management_error: str | None
    has_management: bool


class MissingSecretKey(TaskqError):
    """A Secret a TaskQueue refers to lacks a key the operator needs (the message names Secret and key)."""


def target_for(
    queue: str,
    namespace: str,
    broker_secret: str,
    broker_data: dict[str, str],
    store_secret: str,
    store_data: dict[str, str],
    database: str,
) -> Target:
    """The `Target` of one TaskQueue from its Secrets' data (keys from docs/architecture.md)."""
    if not broker_data.get("amqp-url"):
        raise MissingSecretKey(f"Secret {namespace}/{broker_secret} has no key amqp-url")
    if not store_data.get("mongodb-uri"):
        raise MissingSecretKey(f"Secret {namespace}/{store_secret} has no key mongodb-uri")
    return Target(
        queue=queue,
        amqp_url=broker_data["amqp-url"],
        management_url=broker_data.get("management-url") or None,
        mongodb_uri=store_data["mongodb-uri"],
        database=database,
    )


class Observers:
    """Long-lived observers, one per broker and per store, reused across ticks.

    `read` runs every broker's and every store's batch side by side and waits `timeout_s` at most
    (`taskq_operator.bounded`): the queues of a broker that did not answer in time get no observation,
    the queues of such a store no heartbeats (`Reading.store_error`), and the others are not held up.
    """

    def __init__(self, timeout_s: float = OBSERVE_TIMEOUT_S, workers: int = 16) -> None:
        self.brokers: dict[tuple[str, str | None], BrokerObserver] = {}
        self.stores: dict[tuple[str, str], StoreObserver] = {}
        self.timeout_s = timeout_s
        self._counts_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # the tick thread and reconcile threads both look observers up
        self._batches: Bounded[tuple[str, Any], Any] = Bounded(workers, "taskq-observe")

    def broker(self, target: Target) -> BrokerObserver:
        with self._lock:
            observer = self.brokers.get(target.broker_key)
            if observer is None:
                observer = self.brokers[target.broker_key] = BrokerObserver(target.amqp_url, target.management_url)
            return observer

    def store(self, target: Target) -> StoreObserver:
        with self._lock:
            observer = self.stores.get(target.store_key)
        if observer is not None:
            return observer
        made = StoreObserver(target.mongodb_uri, target.database)  # outside the lock: a mongodb+srv URI resolves DNS here
        with self._lock:
            observer = self.stores.setdefault(target.store_key, made)
        if observer is not made:
            made.close()
        return observer

    def close(self) -> None:
        self._batches.close()
        with self._lock:
            brokers, stores = list(self.brokers.values()), list(self.stores.values())
            self.brokers.clear()
            self.stores.clear()
        for broker in brokers:
            broker.close()
        for store in stores:
            store.close()

    def _store_batch(self, targets: Sequence[Target]) -> StoreBatch:
        store = self.store(targets[0])
        queues = sorted({t.queue for t in targets})
        try:
            loads: dict[str, WorkerLoad] | None = store.worker_loads(queues)
            error = None
        except TaskqError as exc:
            loads, error = None, str(exc)
        counts = None
        key = targets[0].store_key
        if error is None and time.monotonic() - self._counts_at.get(key, 0.0) >= TASK_COUNTS_EVERY_S:
            try:
                counts = store.task_counts(queues)
                self._counts_at[key] = time.monotonic()
            except TaskqError:
                counts = None
        return StoreBatch(loads, counts, error)

    def _broker_batch(self, targets: Sequence[Target]) -> BrokerBatch:
        broker = self.broker(targets[0])
        ready = broker.ready_counts(sorted({t.queue for t in targets}))
        management, age_s, error = broker.management_cached(broker.vhost)
        return BrokerBatch(ready, management, age_s, error, broker.has_management)

    def _readings(
        self,
        targets: Sequence[Target],
        batch: BrokerBatch | str,
        stores: dict[tuple[str, str], StoreBatch],
        *,
        late: bool = False,
    ) -> dict[str, Reading]:
        """Each target's reading from its broker's batch (or why it failed) and its store's."""
        readings: dict[str, Reading] = {}
        for target in targets:
            store = stores[target.store_key]
            load = (store.loads or {}).get(target.queue, WorkerLoad())
            task_counts = store.counts.get(target.queue) if store.counts else None
            if isinstance(batch, str):
                readings[target.queue] = Reading(None, SOURCE_NONE, batch, load, task_counts, store.error, late)
                continue
            count = batch.ready.get(target.queue)
            figures = batch.management.get(target.queue)
            measured = measure(
                Sources(
                    ready=count.ready if count else None,
                    consumers=count.consumers if count else 0,
                    heartbeat_inflight=load.inflight if load.inflight_by_worker else None,
                    management_unacked=figures.unacked if figures else None,
                    management_age_s=batch.management_age_s,
                    management_configured=batch.has_management,
                    management_error=batch.management_error,
                    publish_rate=figures.publish_rate if figures else None,
                    deliver_rate=figures.deliver_rate if figures else None,
                )
            )
            readings[target.queue] = Reading(
                measured.observation, measured.source, measured.error, load, task_counts, store.error
            )
        return readings

    def read(self, targets: Sequence[Target]) -> dict[tuple[tuple[str, str | None], str], Reading]:
        """Readings keyed by (broker key, queue), with one batch per store and per broker, run side by side."""
        by_store: dict[tuple[str, str], list[Target]] = {}
        by_broker: dict[tuple[str, str | None], list[Target]] = {}
        for target in targets:
            by_store.setdefault(target.store_key, []).append(target)
            by_broker.setdefault(target.broker_key, []).append(target)
        jobs: dict[tuple[str, Any], Callable[[], Any]] = {}
        for store_key, group in by_store.items():
            jobs[("store", store_key)] = functools.partial(self._store_batch, group)
        for broker_key, group in by_broker.items():
            jobs[("broker", broker_key)] = functools.partial(self._broker_batch, group)
        outcome = self._batches.run(jobs, self.timeout_s)
        stores: dict[tuple[str, str], StoreBatch] = {}
        for store_key in by_store:
            result = outcome.results.get(("store", store_key))
            if isinstance(result, StoreBatch):
                stores[store_key] = result
            else:
                where = redact_url(store_key[0])
                stores[store_key] = StoreBatch(None, None, self._failure(f"store at {where}", outcome, ("store", store_key)))
        readings: dict[tuple[tuple[str, str | None], str], Reading] = {}
        for broker_key, group in by_broker.items():
            result = outcome.results.get(("broker", broker_key))
            batch = (
                result
                if isinstance(result, BrokerBatch)
                else self._failure(f"broker at {redact_url(broker_key[0])}", outcome, ("broker", broker_key))
            )
            late = ("broker", broker_key) in outcome.late
            for queue, reading in self._readings(group, batch, stores, late=late).items():
                readings[(broker_key, queue)] = reading
        return readings

    def _failure(self, what: str, outcome: Outcome[tuple[str, Any], Any], key: tuple[str, Any]) -> str:
        error = outcome.errors.get(key)
        if error is None:
            return f"{what} did not answer within {self.timeout_s:g} s"
        if isinstance(error, TaskqError):
            return str(error)
        log.error("%s: unexpected %s while observing", what, type(error).__name__, exc_info=error)
        return f"{what} could not be read: {type(error).__name__}"
