"""The scaling loop: observe every due TaskQueue in batches, decide, act on the Deployment, report.

One loop for the whole operator (not one coroutine per TaskQueue): ticks are aligned to each
TaskQueue's `pollIntervalSeconds`, so TaskQueues with the same interval share one batch of broker and
store reads (`taskq_operator.observe`). Acting lowers replicas only after setting
`pod-deletion-cost` from the workers' in-flight counts; reporting patches the status only when it
changed and posts an Event for every replica change and broker reachability flip. A broker read that
was merely late (its batch outlasted the tick's wait, no error) flips nothing until it has been late
`LATE_READS_BEFORE_UNREACHABLE` ticks in a row: a loaded operator must not post two Events and two
status patches per TaskQueue for every slow tick, which would make the next tick slower still.

Faults stay with their TaskQueue: secrets, observation (`taskq_operator.observe`), acting and reporting
each run per TaskQueue (per broker and store for observation) side by side, and a tick waits for each
phase at most `PHASE_TIMEOUT_S` (`taskq_operator.bounded`); a TaskQueue whose work is still running is
left out of later ticks until it ends, and an unexpected error fails that TaskQueue, not the tick. A
scale-down that could remove pods holding unacked work nobody can place is held (`core.guard`), with a
condition and an Event. A Deployment deleted by hand is recreated at the next tick; a Deployment of the
worker's name the TaskQueue does not control is never scaled (`DeploymentOwned` condition). The
scale-down stabilization history is kept in an annotation on the Deployment (`core.history`) and read
back the first time a TaskQueue is handled, so a restart does not shorten the window. Under kopf
peering a standby replica's tick does nothing (`taskq_operator.peering`).

Threads: `run` and `tick_once` live on the event loop. Each tick takes a `CacheSnapshot` of the watch
cache on the loop and does all its blocking I/O on that snapshot in the scaler's own tick thread (so
handlers' threads can never starve it) and its pools; a TaskQueue's `QueueState` is touched by one
thread at a time (the tick thread, or the one pool job it handed it to). The tick hands the replica
counts it patched and the Deployments it recreated back to the loop, which writes them into the cache
and marks the tick completed for the liveness probe (`taskq_operator.liveness`).

Started by `taskq_operator.handlers` at operator start-up; tests drive `tick_once()` directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from taskq.errors import TaskqError
from taskq_operator import metrics
from taskq_operator.adapters.kube import ForeignDeployment, Kube, now_iso
from taskq_operator.adapters.store import WorkerLoad
from taskq_operator.bounded import Bounded, Outcome
from taskq_operator.cache import CacheSnapshot, Key, SecretCache, WatchCache
from taskq_operator.core import history as stored_history
from taskq_operator.core import rates
from taskq_operator.core.conditions import Tick, build_status
from taskq_operator.core.deployment import DELETION_COST_ANNOTATION, deployment_name, selector_string
from taskq_operator.core.guard import Attribution, guard_scale_down
from taskq_operator.core.policy import History, decide, remember
from taskq_operator.core.spec import SpecError, TaskQueueSpec, parse_taskqueue
from taskq_operator.liveness import TickHealth
from taskq_operator.observe import Observers, Reading, Target, target_for
from taskq_operator.peering import PeeringGate
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
    restored: bool = False
    stored_history: str | None = None
    held: str | None = None
    conflict: str | None = None
    counts: tuple[tuple[str, int], ...] | None = None
    """The last task counts read (they are read every few ticks only)."""
    selector: tuple[TaskQueueSpec, str] | None = None
    """The label selector of the Deployment's pods, for the spec it was made from."""
    rates: rates.RateState | None = None
    """Service and arrival rate estimate, kept only for a TaskQueue with `targetWaitSeconds`."""
    late_reads: int = 0
    """Ticks in a row whose broker read was late (`Reading.late`)."""


@dataclass(frozen=True)
class TickResult:
    """What one tick hands back to the loop: seconds to the next poll slot, and the replicas it patched."""

    pause_s: float
    scaled: dict[Key, int] = field(default_factory=dict)
    created: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """TaskQueue key -> the Deployment recreated for it (it had been deleted by hand)."""
    conflicts: dict[Key, str | None] = field(default_factory=dict)
    """TaskQueue key -> why its Deployment name is refused (None: the refusal is over)."""


FAILED_TICK_PAUSE_S = 1.0
PHASE_TIMEOUT_S = 5.0
"""How long a tick waits for one phase (secrets, acting, reporting) of its TaskQueues; normally milliseconds."""
STANDBY_PAUSE_S = 1.0
LATE_READS_BEFORE_UNREACHABLE = 3
"""Ticks in a row whose broker read was late (no answer, no error) before they count as unreachable (KEDA's
fallback `failureThreshold` default). The earlier ones decide, patch and post nothing for that TaskQueue."""


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
        peering: PeeringGate | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.kube = kube
        self.observers = observers or Observers()
        self.secrets = SecretCache(kube.read_secret)
        self.clock = clock
        self.wall_clock = wall_clock  # epoch seconds, for the history annotation
        self.health = health or TickHealth()
        self.sweeper = sweeper  # the outbox sweep (`taskq_operator.sweep`), started after scaling; None: no sweep
        self.peering = peering  # None: standalone, always acts
        self.create_deployment: Callable[[TaskQueueSpec, int], dict[str, Any]] | None = None
        """Creates a TaskQueue's Deployment with a replica count (`reconcile.apply_deployment`, set by the
        handlers); None: Deployments deleted by hand are not recreated."""
        self.states: dict[Key, QueueState] = {}
        self.wake = asyncio.Event()
        self._tick_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskq-tick")
        self._jobs: Bounded[tuple[str, Key], Any] = Bounded(8, "taskq-queue")
        self._standby: str | None = None

    # -- loop (event loop) ----------------------------------------------------------------------

    async def tick_once(self) -> TickResult:
        """Snapshot the cache, tick in a worker thread, write the patched replicas back, mark the tick done."""
        snapshot = self.cache.snapshot()
        started = time.monotonic()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._tick_thread, self.tick, snapshot)
        finally:
            metrics.TICK_SECONDS.observe(time.monotonic() - started)
        self.cache.record_scaled(result.scaled)
        for key, body in result.created.items():
            self.cache.upsert_deployment(body)
            self.cache.recreate.pop(key, None)
        for key, conflict in result.conflicts.items():
            if conflict is None:
                self.cache.conflicts.pop(key, None)
            elif key in self.cache.taskqueues:
                self.cache.conflicts[key] = conflict
        self.health.tick_completed()
        return result

    def close(self) -> None:
        """Stop the pools (running jobs end on their own timeouts) and the observers."""
        self._jobs.close()
        self._tick_thread.shutdown(wait=False, cancel_futures=True)
        self.observers.close()

    async def run(self, stopped: asyncio.Event) -> None:
        """Tick until `stopped` is set, sleeping to the next poll slot unless woken (`wake`) earlier."""
        while not stopped.is_set():
            self.wake.clear()  # before the tick: a wake-up during it brings the next one forward
            try:
                pause = (await self.tick_once()).pause_s
            except Exception:  # keep the loop alive whatever one tick hit; the probe sees no completed tick
                log.exception("scaler tick failed")
                metrics.ERRORS.labels("tick").inc()
                pause = FAILED_TICK_PAUSE_S
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
        if self._stands_by(snapshot):
            return TickResult(STANDBY_PAUSE_S)
        now = self.clock()
        gone = [key for key in set(self.states) - set(snapshot.taskqueues) if not self._busy(key)]
        for key in gone:
            del self.states[key]
            metrics.forget(*key)
        if gone:
            self._jobs.forget(lambda job: job[1] in snapshot.taskqueues)
        result = TickResult(0.0)
        due: dict[Key, tuple[TaskQueueSpec, dict[str, Any]]] = {}
        recreate: dict[Key, TaskQueueSpec] = {}
        intervals: list[int] = []
        for key, body in snapshot.taskqueues.items():
            if self._busy(key):
                continue  # its work from an earlier tick is still running
            state = self.states.setdefault(key, QueueState())
            spec = self._spec(state, body)
            if spec is None:
                continue
            interval = spec.scaling.poll_interval_s
            intervals.append(interval)
            if key in snapshot.recreate:
                recreate[key] = spec
                state.stored_history = None  # the new Deployment has no history annotation yet
            slot = int(now // interval)
            if slot == state.last_slot:
                continue
            state.last_slot = slot
            due[key] = (spec, body)
        metrics.TASKQUEUE_TICKS.inc(len(due))
        if recreate and self.create_deployment is not None:
            self._recreate(self.create_deployment, recreate, snapshot, result)
        targets = self._run("target", {key: functools.partial(self._target, spec) for key, (spec, _) in due.items()})
        resolved = [t for t, _ in targets.results.values() if t is not None]
        readings = self.observers.read(resolved) if resolved else {}
        acts: dict[Key, Callable[[], Any]] = {}
        for key, (spec, _) in due.items():
            found = targets.results.get(key)
            target, error = found if found is not None else (None, self._late(targets, key, "reading its Secrets"))
            reading = readings.get((target.broker_key, spec.queue)) if target else None
            if reading is None:
                reading = Reading(None, "none", error or "broker not read")
            state = self.states[key]
            state.late_reads = state.late_reads + 1 if reading.late else 0
            if 0 < state.late_reads < LATE_READS_BEFORE_UNREACHABLE:
                continue  # no answer yet is no outage: this tick leaves the TaskQueue as it is
            conflict = snapshot.conflicts.get(key)
            acts[key] = functools.partial(self._decide_and_act, key, spec, reading, now, snapshot, conflict)
        acted = self._run("act", acts)  # scale every due TaskQueue first: it is what waits
        reports: dict[Key, Callable[[], Any]] = {}
        for key, (tick, before, reading, scaled) in acted.results.items():
            if scaled is not None:
                result.scaled[(tick.spec.namespace, deployment_name(tick.spec))] = scaled
            reports[key] = functools.partial(self._report, key, tick, before, reading, due[key][1])
        self._run("report", reports)  # then events and status
        if self.sweeper is not None:  # starts a background sweep of the stores that are due; never waits for it
            observed = [(due[key][0], target) for key, (target, _) in targets.results.items() if target is not None]
            self.sweeper.offer(observed, set(snapshot.taskqueues))
        shortest = min(intervals, default=1)
        return TickResult(max(0.05, shortest - (self.clock() % shortest)), result.scaled, result.created, result.conflicts)

    @property
    def standby(self) -> str | None:
        """Why this replica stood by at its last tick under peering (None: it acts)."""
        return self._standby

    def _stands_by(self, snapshot: CacheSnapshot) -> bool:
        """Whether kopf's peering makes this replica a standby now (logged when that changes)."""
        if self.peering is None:
            return False
        try:
            why = self.peering.holder(ns for ns, _ in snapshot.taskqueues)
        except TaskqError as exc:
            why = str(exc)
        if why != self._standby:
            if why is None:
                log.info("peering: this replica is active, scaling resumes")
            else:
                log.info("peering: not acting (%s)", why)
                self.states.clear()  # on taking over, start from what the active replica left (annotations, status)
            self._standby = why
        return why is not None

    def _busy(self, key: Key) -> bool:
        return any(self._jobs.busy((phase, key)) for phase in ("target", "act", "report", "recreate"))

    def _run(self, phase: str, jobs: dict[Key, Callable[[], Any]]) -> Outcome[Key, Any]:
        """Run one phase's jobs side by side (bounded); a TaskQueue's failure or lateness is logged, never raised."""
        outcome = self._jobs.run({(phase, key): job for key, job in jobs.items()}, PHASE_TIMEOUT_S)
        by_key: Outcome[Key, Any] = Outcome()
        for (_, key), value in outcome.results.items():
            by_key.results[key] = value
        for (_, key), error in outcome.errors.items():
            by_key.errors[key] = error
            metrics.ERRORS.labels("kubernetes" if isinstance(error, TaskqError) else "taskqueue").inc()
            if isinstance(error, TaskqError):
                log.warning("TaskQueue %s/%s: %s", key[0], key[1], error)
            else:
                log.error("TaskQueue %s/%s: %s failed", key[0], key[1], phase, exc_info=error)
        for (_, key), future in outcome.late.items():
            by_key.late[key] = future
            metrics.ERRORS.labels("late").inc()
            log.warning("TaskQueue %s/%s: %s still running after %g s; left out until it ends", *key, phase, PHASE_TIMEOUT_S)
        return by_key

    @staticmethod
    def _late(outcome: Outcome[Key, Any], key: Key, what: str) -> str:
        error = outcome.errors.get(key)
        if isinstance(error, TaskqError):
            return str(error)
        if error is not None:
            return f"{what} failed: {type(error).__name__}"
        return f"{what} took longer than {PHASE_TIMEOUT_S:g} s"

    def _recreate(
        self,
        create: Callable[[TaskQueueSpec, int], dict[str, Any]],
        specs: dict[Key, TaskQueueSpec],
        snapshot: CacheSnapshot,
        result: TickResult,
    ) -> None:
        """Recreate the Deployments deleted by hand (with the replicas they had); refuse a foreign one."""
        jobs = {key: functools.partial(create, spec, snapshot.recreate[key]) for key, spec in specs.items()}
        outcome = self._jobs.run({("recreate", key): job for key, job in jobs.items()}, PHASE_TIMEOUT_S)
        for (_, key), body in outcome.results.items():
            log.info("TaskQueue %s/%s: Deployment %s recreated (it was deleted)", *key, deployment_name(specs[key]))
            result.created[key] = body
            if key in snapshot.conflicts:
                result.conflicts[key] = None
        for (_, key), error in outcome.errors.items():
            if isinstance(error, ForeignDeployment):
                result.conflicts[key] = str(error)
            else:
                log.warning("TaskQueue %s/%s: Deployment not recreated yet: %s", *key, error)

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
        self, key: Key, spec: TaskQueueSpec, reading: Reading, now: float, snapshot: CacheSnapshot, conflict: str | None
    ) -> tuple[Tick, int, Reading, int | None]:
        """Decide and, when the count changes, patch the Deployment: (tick, old count, reading, new count if patched)."""
        state = self.states[key]
        name = deployment_name(spec)
        view = snapshot.deployments.get((spec.namespace, name))
        if view is not None and view.owner_uid != spec.uid:
            conflict = conflict or (
                f"Deployment {spec.namespace}/{name} is not owned by TaskQueue {spec.namespace}/{spec.name}; it is never scaled"
            )
            view = None
        current = view.replicas if view is not None else 0
        wall_offset = self.wall_clock() - now
        keep = max(spec.scaling.scale_up.stabilization_window_s, spec.scaling.scale_down.stabilization_window_s)
        if not state.restored and view is not None:
            state.restored = True
            state.stored_history = view.history
            restored = stored_history.decode(view.history, now, wall_offset)
            if restored:
                state.history = History(current, tuple(sorted(set(restored) | set(state.history.recommendations))))
        history = History(current, state.history.recommendations)
        if spec.scaling.target_wait_s is not None:
            reading = self._with_rates(state, spec, reading, now)
        decision = decide(spec.scaling, reading.observation, history, now)
        state.history = remember(history, now, decision.recommendation, keep)
        observation = reading.observation
        attribution = Attribution(
            consumers=observation.consumers if observation is not None else 0,
            reporting=len(reading.loads.inflight_by_worker),
            store_error=reading.store_error,
        )
        decision, held = guard_scale_down(decision, current, attribution)
        if state.rates is not None:
            state.rates = rates.scaled_to(state.rates, decision.replicas, now)
        if state.gauges is None:
            state.gauges = metrics.QueueGauges.of(spec.namespace, spec.name)
        state.gauges.record(
            observation.ready if observation else None, observation.unacked if observation else None, decision.replicas
        )
        text = stored_history.encode(
            state.history.recommendations,
            now,
            spec.scaling.scale_down.stabilization_window_s,
            wall_offset,
            spec.scaling.min_replicas,
        )
        annotations = {stored_history.ANNOTATION: text} if view is not None and text != (state.stored_history or "") else None
        scaled: int | None = None
        if view is not None and decision.replicas != current:
            if decision.replicas < current and reading.store_error is None:
                self._spare_busy_pods(spec, reading.loads)
            self.kube.scale_deployment(spec.namespace, name, decision.replicas, annotations)
            scaled = decision.replicas
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
        elif annotations is not None:
            self.kube.annotate_deployment(spec.namespace, name, annotations)
        if annotations is not None:
            state.stored_history = text
        tick = Tick(
            spec=spec,
            observation=observation,
            observation_source=reading.source,
            broker_error=reading.error,
            decision=decision,
            replicas=view.status_replicas if view is not None else 0,
            ready_replicas=view.ready_replicas if view is not None else 0,
            scaled=scaled is not None,
            task_counts=reading.task_counts,
            selector=self._selector(state, spec),
            held=held,
            conflict=conflict,
        )
        return tick, current, reading, scaled

    @staticmethod
    def _with_rates(state: QueueState, spec: TaskQueueSpec, reading: Reading, now: float) -> Reading:
        """`reading` with the service and arrival rates (`core.rates`) from its heartbeats, for `targetWaitSeconds`."""
        loads = reading.loads
        beats = {
            worker: rates.Beat(at, processed, loads.inflight_by_worker.get(worker, 0))
            for worker, (at, processed) in loads.beats_by_worker.items()
        }
        observation = reading.observation
        backlog = observation.backlog if observation is not None else None
        if reading.store_error is None:
            published = observation.publish_rate if observation is not None else None
            slots = spec.scaling.slots_per_replica
            state.rates = rates.update(state.rates or rates.RateState(), beats, backlog, slots, now, published)
        return dataclasses.replace(reading, observation=rates.with_rates(observation, state.rates or rates.RateState()))

    @staticmethod
    def _selector(state: QueueState, spec: TaskQueueSpec) -> str:
        if state.selector is None or state.selector[0] is not spec:
            state.selector = (spec, selector_string(spec))
        return state.selector[1]

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
        held = tick.held.reason if tick.held is not None else None
        if held is not None and held != state.held:
            self._event(spec, "Warning", "ScaleDownHeld", decision.message)
        state.held = held
        if tick.conflict is not None and tick.conflict != state.conflict:
            self._event(spec, "Warning", "DeploymentNotOwned", tick.conflict)
        state.conflict = tick.conflict
        # Task counts come every few ticks; between them the status keeps the last ones, so does the fingerprint.
        if tick.task_counts is not None:
            state.counts = tuple(sorted(tick.task_counts.items()))
        counts = state.counts
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
            held,
            tick.conflict,
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
