"""The scaling loop: observe every due TaskQueue in batches, decide, act on the Deployment, report.

One loop for the whole operator (not one coroutine per TaskQueue): ticks are aligned to each
TaskQueue's `pollIntervalSeconds`, so TaskQueues with the same interval share one batch of broker and
store reads (`taskq_operator.observe`). Acting lowers replicas only after setting
`pod-deletion-cost` from the workers' in-flight counts; reporting patches the status only when it
changed and posts an Event for every replica change and broker reachability flip.

Threads: `run` and `tick_once` live on the event loop. Each tick takes a `CacheSnapshot` of the watch
cache on the loop, does all its blocking I/O in one worker thread on that snapshot (the tick thread
alone touches `states`), and hands the replica counts it patched back to the loop, which writes them
into the cache and marks the tick completed for the liveness probe (`taskq_operator.liveness`).

Started by `taskq_operator.handlers` at operator start-up; tests drive `tick_once()` directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskq.errors import TaskqError
from taskq_operator import metrics
from taskq_operator.adapters.kube import Kube, now_iso
from taskq_operator.adapters.store import WorkerLoad
from taskq_operator.cache import CacheSnapshot, Key, SecretCache, WatchCache
from taskq_operator.core.conditions import Tick, build_status
from taskq_operator.core.deployment import DELETION_COST_ANNOTATION, deployment_name, selector_string
from taskq_operator.core.policy import History, decide, remember
from taskq_operator.core.spec import SpecError, TaskQueueSpec, parse_taskqueue
from taskq_operator.liveness import TickHealth
from taskq_operator.observe import Observers, Reading, Target, target_for
from taskq_operator.sweep import Sweeper

log = logging.getLogger("taskq_operator.scaler")


@dataclass
class QueueState:
    """What the loop remembers about one TaskQueue between ticks."""

    history: History = field(default_factory=lambda: History(0))
    last_slot: int = -1
    last_status: dict[str, Any] | None = None
    reachable: bool | None = None
    parsed: tuple[str, TaskQueueSpec] | None = None
    gauges: metrics.QueueGauges | None = None
    fingerprint: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class TickResult:
    """What one tick hands back to the loop: seconds to the next poll slot, and the replicas it patched."""

    pause_s: float
    scaled: dict[Key, int] = field(default_factory=dict)


FAILED_TICK_PAUSE_S = 1.0


class Scaler:
    """Observe → decide → act → report for every TaskQueue in the watch cache."""

    def __init__(
        self,
        cache: WatchCache,
        kube: Kube,
        observers: Observers | None = None,
        clock: Callable[[], float] = time.monotonic,
        health: TickHealth | None = None,
        sweeper: Sweeper | None = None,
    ) -> None:
        self.cache = cache
        self.kube = kube
        self.observers = observers or Observers()
        self.secrets = SecretCache(kube.read_secret)
        self.clock = clock
        self.health = health or TickHealth()
        self.sweeper = sweeper  # the outbox sweep (`taskq_operator.sweep`), started after scaling; None: no sweep
        self.states: dict[Key, QueueState] = {}
        self.wake = asyncio.Event()

    # -- loop (event loop) ----------------------------------------------------------------------

    async def tick_once(self) -> TickResult:
        """Snapshot the cache, tick in a worker thread, write the patched replicas back, mark the tick done."""
        snapshot = self.cache.snapshot()
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(self.tick, snapshot)
        finally:
            metrics.TICK_SECONDS.observe(time.monotonic() - started)
        self.cache.record_scaled(result.scaled)
        self.health.tick_completed()
        return result

    async def run(self, stopped: asyncio.Event) -> None:
        """Tick until `stopped` is set, sleeping to the next poll slot unless woken (`wake`) earlier."""
        while not stopped.is_set():
            try:
                pause = (await self.tick_once()).pause_s
            except Exception:  # keep the loop alive whatever one tick hit; the probe sees no completed tick
                log.exception("scaler tick failed")
                metrics.ERRORS.labels("tick").inc()
                pause = FAILED_TICK_PAUSE_S
            self.wake.clear()
            waiters = [asyncio.ensure_future(stopped.wait()), asyncio.ensure_future(self.wake.wait())]
            await asyncio.wait(waiters, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    # -- one tick (worker thread) ---------------------------------------------------------------

    def _spec(self, state: QueueState, body: dict[str, Any]) -> TaskQueueSpec | None:
        version = f"{id(body)}/{(body.get('metadata') or {}).get('resourceVersion')}"  # a new event = a new dict
        if state.parsed is not None and state.parsed[0] == version:
            return state.parsed[1]
        try:
            spec = parse_taskqueue(body)
        except SpecError:
            return None  # the reconcile handler reports invalid specs
        state.parsed = (version, spec)
        return spec

    def tick(self, snapshot: CacheSnapshot) -> TickResult:
        """One pass over `snapshot`: handle every TaskQueue whose poll slot changed (blocking I/O)."""
        now = self.clock()
        for gone in set(self.states) - set(snapshot.taskqueues):
            del self.states[gone]
            metrics.forget(*gone)
        due: list[tuple[Key, TaskQueueSpec, Target | None, str | None, dict[str, Any]]] = []
        intervals: list[int] = []
        scaled: dict[Key, int] = {}
        for key, body in snapshot.taskqueues.items():
            state = self.states.setdefault(key, QueueState())
            spec = self._spec(state, body)
            if spec is None:
                continue
            interval = spec.scaling.poll_interval_s
            intervals.append(interval)
            slot = int(now // interval)
            if slot == state.last_slot:
                continue
            state.last_slot = slot
            target, error = self._target(spec)
            due.append((key, spec, target, error, body))
        targets = [item[2] for item in due if item[2] is not None]
        readings = self.observers.read(targets) if targets else {}
        acted: list[tuple[Key, Tick, int, Reading, dict[str, Any]]] = []
        for key, spec, target, error, body in due:  # scale every due TaskQueue first: it is what waits
            reading = readings.get((target.broker_key, spec.queue)) if target else None
            if reading is None:
                reading = Reading(None, "none", error or "broker not read")
            try:
                tick, before = self._decide_and_act(key, spec, reading, now, snapshot, scaled)
            except TaskqError as exc:
                metrics.ERRORS.labels("kubernetes").inc()
                log.warning("TaskQueue %s/%s: %s", key[0], key[1], exc)
                continue
            acted.append((key, tick, before, reading, body))
        for key, tick, before, reading, body in acted:  # then events and status
            try:
                self._report(key, tick, before, reading, body)
            except TaskqError as exc:
                metrics.ERRORS.labels("kubernetes").inc()
                log.warning("TaskQueue %s/%s: %s", key[0], key[1], exc)
        if self.sweeper is not None:  # starts a background sweep of the stores that are due; never waits for it
            self.sweeper.offer([(item[1], item[2]) for item in due if item[2] is not None], set(snapshot.taskqueues))
        shortest = min(intervals, default=1)
        return TickResult(max(0.05, shortest - (self.clock() % shortest)), scaled)

    def _target(self, spec: TaskQueueSpec) -> tuple[Target | None, str | None]:
        try:
            broker = self.secrets.get(spec.namespace, spec.broker_secret)
            store = self.secrets.get(spec.namespace, spec.store_secret)
            return target_for(
                spec.queue, spec.namespace, spec.broker_secret, broker, spec.store_secret, store, spec.database
            ), None
        except TaskqError as exc:
            metrics.ERRORS.labels("secret").inc()
            return None, str(exc)

    # -- one TaskQueue ------------------------------------------------------------------------

    def _decide_and_act(
        self, key: Key, spec: TaskQueueSpec, reading: Reading, now: float, snapshot: CacheSnapshot, patched: dict[Key, int]
    ) -> tuple[Tick, int]:
        """Decide and, when the count changes, patch the Deployment (noted in `patched`); returns the tick and the old count."""
        state = self.states[key]
        name = deployment_name(spec)
        view = snapshot.deployments.get((spec.namespace, name))
        current = view.replicas if view is not None else 0
        history = History(current, state.history.recommendations)
        decision = decide(spec.scaling, reading.observation, history, now)
        keep = max(spec.scaling.scale_up.stabilization_window_s, spec.scaling.scale_down.stabilization_window_s)
        state.history = remember(history, now, decision.recommendation, keep)
        observation = reading.observation
        if state.gauges is None:
            state.gauges = metrics.QueueGauges.of(spec.namespace, spec.name)
        state.gauges.record(
            observation.ready if observation else None, observation.unacked if observation else None, decision.replicas
        )
        scaled = False
        if view is not None and decision.replicas != current:
            if decision.replicas < current:
                self._spare_busy_pods(spec, reading.loads)
            self.kube.scale_deployment(spec.namespace, name, decision.replicas)
            patched[(spec.namespace, name)] = decision.replicas
            scaled = True
            log.info(
                "TaskQueue %s/%s: %s %d -> %d: %s",
                spec.namespace,
                spec.name,
                decision.reason,
                current,
                decision.replicas,
                decision.message,
            )
            metrics.SCALINGS.labels(spec.namespace, spec.name, decision.reason).inc()
        tick = Tick(
            spec=spec,
            observation=observation,
            observation_source=reading.source,
            broker_error=reading.error,
            decision=decision,
            replicas=view.status_replicas if view is not None else 0,
            ready_replicas=view.ready_replicas if view is not None else 0,
            scaled=scaled,
            task_counts=reading.task_counts,
            selector=selector_string(spec),
        )
        return tick, current

    def _report(self, key: Key, tick: Tick, before: int, reading: Reading, body: dict[str, Any]) -> None:
        """Events for what changed, and the status patch when the status differs from the last one."""
        state = self.states[key]
        spec, decision = tick.spec, tick.decision
        if tick.scaled:
            self._event(
                spec,
                "Warning" if decision.reason == "Fallback" else "Normal",
                decision.reason,
                f"{before} -> {decision.replicas} replicas: {decision.message}",
            )
        self._report_reachability(spec, state, reading)
        counts = tuple(sorted(tick.task_counts.items())) if tick.task_counts is not None else None
        fingerprint = (
            tick.observation,
            tick.observation_source,
            tick.broker_error,
            decision.replicas,
            decision.reason,
            decision.limited,
            tick.replicas,
            tick.ready_replicas,
            counts,
            spec.generation,
            spec.scaling.paused,
        )
        if not tick.scaled and fingerprint == state.fingerprint:
            return  # same inputs as last tick: same status, nothing to build or send
        previous = state.last_status if state.last_status is not None else dict(body.get("status") or {})
        status = build_status(tick, previous, now_iso())
        if status != state.last_status:
            self.kube.patch_taskqueue_status(spec.namespace, spec.name, status)
            state.last_status = status
        state.fingerprint = fingerprint

    def _report_reachability(self, spec: TaskQueueSpec, state: QueueState, reading: Reading) -> None:
        reachable = reading.observation is not None
        if state.reachable is not None and reachable != state.reachable:
            if reachable:
                self._event(spec, "Normal", "BrokerReachable", f"queue {spec.queue} readable again")
            else:
                self._event(spec, "Warning", "BrokerUnreachable", f"{reading.error or 'broker not read'}; holding replicas")
        state.reachable = reachable

    def _spare_busy_pods(self, spec: TaskQueueSpec, loads: WorkerLoad) -> None:
        """Give each pod a deletion cost equal to its in-flight tasks, so idle pods are removed first."""
        try:
            pods = self.kube.list_pods(spec.namespace, selector_string(spec))
        except TaskqError as exc:
            log.warning("TaskQueue %s/%s: cannot rank pods before scaling down: %s", spec.namespace, spec.name, exc)
            return
        for pod in pods:
            meta = pod.get("metadata") or {}
            pod_name = str(meta.get("name"))
            cost = str(loads.inflight_by_worker.get(pod_name, 0))
            if (meta.get("annotations") or {}).get(DELETION_COST_ANNOTATION) != cost:
                try:
                    self.kube.annotate_pod(spec.namespace, pod_name, {DELETION_COST_ANNOTATION: cost})
                except TaskqError as exc:
                    log.warning("pod %s/%s: deletion cost not set: %s", spec.namespace, pod_name, exc)

    def _event(self, spec: TaskQueueSpec, type_: str, reason: str, message: str) -> None:
        try:
            self.kube.post_event(spec.namespace, spec.name, spec.uid, type_, reason, message)
        except TaskqError as exc:
            log.warning("TaskQueue %s/%s: event %s not posted: %s", spec.namespace, spec.name, reason, exc)
