"""Parse a TaskQueue object (a plain dict from the API server) into typed, validated settings.

The CRD schema (`crds/taskqueue.yaml`) applies defaults and validates; this parser repeats the defaults
so that objects the API server never defaulted (unit tests, KMock) parse the same, and raises
`SpecError` naming the field when something is still wrong. Called by the handlers and the builder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskq.core import limits
from taskq.core.limits import QUORUM_MAX_PRIORITY as QUORUM_MAX_PRIORITY
from taskq.core.limits import IntRange
from taskq.core.message import TASK_NAME_PATTERN
from taskq_operator.core.schedules import Schedule, ScheduleError, check_cron, zone

GROUP = "taskq.io"
VERSION = "v1alpha1"
PLURAL = "taskqueues"
KIND = "TaskQueue"

POOLS = ("process", "thread", "asyncio")
QUEUE_TYPES = ("classic", "quorum")


class SpecError(ValueError):
    """A TaskQueue spec that cannot be used; the message names the field."""


@dataclass(frozen=True)
class StepRules:
    """How a scaling direction is limited: stabilization window and step size per decision."""

    stabilization_window_s: int
    max_step_pods: int
    max_step_percent: int


@dataclass(frozen=True)
class ScalingSpec:
    min_replicas: int = 0
    max_replicas: int = 10
    tasks_per_replica: int | None = limits.DEFAULT_TASKS_PER_REPLICA
    """None: only `target_wait_s` sizes the Deployment (the parser's default applies when neither is set)."""
    target_wait_s: float | None = None
    """`targetWaitSeconds`: size for the expected wait of a new task (`core.policy`); None: not used."""
    slots_per_replica: int = limits.DEFAULT_CONCURRENCY
    """The worker's `concurrency` (tasks one replica runs at once): the wait model's servers per replica."""
    activation_backlog: int = 0
    poll_interval_s: int = 2
    fallback_replicas: int | None = None
    paused: bool = False
    manual_replicas: int | None = None
    scale_up: StepRules = StepRules(0, 4, 100)
    scale_down: StepRules = StepRules(300, 4, 100)


@dataclass(frozen=True)
class RetryBackoff:
    initial_s: float = 1.0
    max_s: float = 300.0
    factor: float = 2.0


@dataclass(frozen=True)
class TasksSpec:
    max_retries: int = 3
    timeout_s: int = 300
    max_priority: int = 10
    retry_backoff: RetryBackoff = RetryBackoff()
    queue_type: str = "classic"
    max_deliveries: int = 5
    result_ttl_s: int = limits.DEFAULT_RESULT_TTL_S  # finished tasks older than this are deleted by the sweep; 0: kept


@dataclass(frozen=True)
class WorkerSpec:
    image: str
    task_modules: tuple[str, ...] = ()
    pool: str = "process"
    prefetch: int | None = None
    """None: the worker picks its own default (concurrency plus a small look-ahead)."""
    concurrency: int = 4
    max_tasks_per_child: int = 0
    max_memory_per_child_mib: int = 0
    termination_grace_s: int = 330
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class TaskQueueSpec:
    """Everything the operator needs from one TaskQueue object."""

    name: str
    namespace: str
    uid: str
    generation: int
    queue: str
    broker_secret: str
    store_secret: str
    database: str
    worker: WorkerSpec
    scaling: ScalingSpec
    tasks: TasksSpec
    schedules: tuple[Schedule, ...] = ()


def _section(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}.{key} must be an object")
    return value


def _int(section: Mapping[str, Any], key: str, path: str, default: int, bounds: IntRange) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}.{key} must be an integer, got {value!r}")
    if value not in bounds:
        raise SpecError(f"{path}.{key} must be between {bounds.low} and {bounds.high}, got {value}")
    return value


def _number(section: Mapping[str, Any], key: str, path: str, default: float, bounds: limits.NumberRange) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{path}.{key} must be a number, got {value!r}")
    if value not in bounds:
        low = f"> {bounds.low}" if bounds.low_exclusive else f">= {bounds.low}"
        raise SpecError(f"{path}.{key} must be {low} and <= {bounds.high}, got {value}")
    return float(value)


def _choice(section: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...]) -> str:
    """One of `choices`; the first is the default."""
    value = section.get(key, choices[0])
    if value not in choices:
        raise SpecError(f"{path}.{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _secret_name(spec: Mapping[str, Any], section: str) -> str:
    ref = _section(_section(spec, section, "spec"), "secretRef", f"spec.{section}")
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"spec.{section}.secretRef.name is required")
    return name


def _step_rules(scaling: Mapping[str, Any], key: str, default: StepRules, percent: IntRange) -> StepRules:
    section = _section(scaling, key, "spec.scaling")
    path = f"spec.scaling.{key}"
    return StepRules(
        stabilization_window_s=_int(
            section, "stabilizationWindowSeconds", path, default.stabilization_window_s, limits.STABILIZATION_WINDOW_S
        ),
        max_step_pods=_int(section, "maxStepPods", path, default.max_step_pods, limits.MAX_STEP_PODS),
        max_step_percent=_int(section, "maxStepPercent", path, default.max_step_percent, percent),
    )


def parse_scaling(spec: Mapping[str, Any]) -> ScalingSpec:
    scaling = _section(spec, "scaling", "spec")
    path = "spec.scaling"
    defaults = ScalingSpec()
    minimum = _int(scaling, "minReplicas", path, defaults.min_replicas, limits.MIN_REPLICAS)
    maximum = _int(scaling, "maxReplicas", path, defaults.max_replicas, limits.MAX_REPLICAS)
    if minimum > maximum:
        raise SpecError("spec.scaling.minReplicas must be <= spec.scaling.maxReplicas")
    fallback = scaling.get("fallbackReplicas")
    if fallback is not None:
        fallback = _int(scaling, "fallbackReplicas", path, 0, IntRange(limits.MIN_REPLICAS.low, maximum))
    manual = spec.get("replicas")
    if manual is not None:
        manual = _int(spec, "replicas", "spec", 0, limits.REPLICAS)
    paused = scaling.get("paused", False)
    if not isinstance(paused, bool):
        raise SpecError("spec.scaling.paused must be a boolean")
    target_wait = scaling.get("targetWaitSeconds")
    if target_wait is not None:
        target_wait = _number(scaling, "targetWaitSeconds", path, 0.0, limits.TARGET_WAIT_S)
    per_replica = scaling.get("tasksPerReplica")
    if per_replica is not None or target_wait is None:
        per_replica = _int(scaling, "tasksPerReplica", path, limits.DEFAULT_TASKS_PER_REPLICA, limits.TASKS_PER_REPLICA)
    slots = _int(_section(spec, "worker", "spec"), "concurrency", "spec.worker", limits.DEFAULT_CONCURRENCY, limits.CONCURRENCY)
    return ScalingSpec(
        min_replicas=minimum,
        max_replicas=maximum,
        tasks_per_replica=per_replica,
        target_wait_s=target_wait,
        slots_per_replica=slots,
        activation_backlog=_int(scaling, "activationBacklog", path, defaults.activation_backlog, limits.ACTIVATION_BACKLOG),
        poll_interval_s=_int(scaling, "pollIntervalSeconds", path, defaults.poll_interval_s, limits.POLL_INTERVAL_S),
        fallback_replicas=fallback,
        paused=paused,
        manual_replicas=manual,
        scale_up=_step_rules(scaling, "scaleUp", defaults.scale_up, limits.MAX_STEP_PERCENT_UP),
        scale_down=_step_rules(scaling, "scaleDown", defaults.scale_down, limits.MAX_STEP_PERCENT_DOWN),
    )


def parse_tasks(spec: Mapping[str, Any]) -> TasksSpec:
    tasks = _section(spec, "tasks", "spec")
    backoff = _section(tasks, "retryBackoff", "spec.tasks")
    defaults = TasksSpec()
    path = "spec.tasks.retryBackoff"
    retry = RetryBackoff(
        initial_s=_number(backoff, "initialSeconds", path, defaults.retry_backoff.initial_s, limits.RETRY_DELAY_S),
        max_s=_number(backoff, "maxSeconds", path, defaults.retry_backoff.max_s, limits.RETRY_DELAY_S),
        factor=_number(backoff, "factor", path, defaults.retry_backoff.factor, limits.RETRY_FACTOR),
    )
    if retry.initial_s > retry.max_s:
        raise SpecError("spec.tasks.retryBackoff.initialSeconds must be <= maxSeconds")
    parsed = TasksSpec(
        max_retries=_int(tasks, "maxRetries", "spec.tasks", defaults.max_retries, limits.MAX_RETRIES),
        timeout_s=_int(tasks, "timeoutSeconds", "spec.tasks", defaults.timeout_s, limits.TASKQUEUE_TIMEOUT_S),
        max_priority=_int(tasks, "maxPriority", "spec.tasks", defaults.max_priority, limits.MAX_PRIORITY),
        retry_backoff=retry,
        queue_type=_choice(tasks, "queueType", "spec.tasks", QUEUE_TYPES),
        max_deliveries=_int(tasks, "maxDeliveries", "spec.tasks", defaults.max_deliveries, limits.MAX_DELIVERIES),
        result_ttl_s=_int(tasks, "resultTTLSeconds", "spec.tasks", defaults.result_ttl_s, limits.RESULT_TTL_S),
    )
    if parsed.queue_type == "quorum" and parsed.max_priority != QUORUM_MAX_PRIORITY:
        raise SpecError(f"spec.tasks.maxPriority must stay at its default ({QUORUM_MAX_PRIORITY}) with queueType quorum")
    return parsed


def parse_worker(spec: Mapping[str, Any]) -> WorkerSpec:
    worker = _section(spec, "worker", "spec")
    image = worker.get("image")
    if not isinstance(image, str) or not image:
        raise SpecError("spec.worker.image is required")
    if len(image) > limits.IMAGE_MAX_LENGTH or re.fullmatch(limits.IMAGE_PATTERN, image) is None:
        raise SpecError(f"spec.worker.image must be an image reference ([registry/]path[:tag][@digest]), got {image!r}")
    modules = worker.get("taskModules") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise SpecError("spec.worker.taskModules must be a list of module names")
    env = worker.get("env") or []
    tolerations = worker.get("tolerations") or []
    if not isinstance(env, list) or not isinstance(tolerations, list):
        raise SpecError("spec.worker.env and spec.worker.tolerations must be lists")
    path = "spec.worker"
    concurrency = _int(worker, "concurrency", path, limits.DEFAULT_CONCURRENCY, limits.CONCURRENCY)
    prefetch = None if worker.get("prefetch") is None else _int(worker, "prefetch", path, 0, limits.PREFETCH)
    if prefetch is not None and prefetch < concurrency:
        # The CRD rejects this for new and edited objects, but objects stored before the rule (with the
        # old default prefetch 64 and a larger concurrency) still reach the operator: run them, every
        # slot busy, instead of giving up on them.
        prefetch = concurrency
    pool = _choice(worker, "pool", path, POOLS)
    max_tasks = _int(worker, "maxTasksPerChild", path, 0, limits.MAX_TASKS_PER_CHILD)
    max_memory = _int(worker, "maxMemoryPerChildMiB", path, 0, limits.MAX_MEMORY_PER_CHILD_MIB)
    for key, value in (("maxTasksPerChild", max_tasks), ("maxMemoryPerChildMiB", max_memory)):
        if value and pool != "process":
            raise SpecError(f"spec.worker.{key} applies to pool 'process' only, got pool {pool!r}")
    return WorkerSpec(
        image=image,
        task_modules=tuple(modules),
        pool=pool,
        prefetch=prefetch,
        concurrency=concurrency,
        max_tasks_per_child=max_tasks,
        max_memory_per_child_mib=max_memory,
        termination_grace_s=_int(
            worker, "terminationGracePeriodSeconds", path, limits.DEFAULT_TERMINATION_GRACE_S, limits.TERMINATION_GRACE_S
        ),
        resources=dict(_section(worker, "resources", "spec.worker")),
        env=tuple(env),
        node_selector={str(k): str(v) for k, v in _section(worker, "nodeSelector", "spec.worker").items()},
        tolerations=tuple(tolerations),
    )


def _schedule(item: object, path: str) -> Schedule:
    if not isinstance(item, Mapping):
        raise SpecError(f"{path} must be an object")
    name, cron, task = item.get("name"), item.get("cron"), item.get("task")
    if (
        not isinstance(name, str)
        or len(name) > limits.SCHEDULE_NAME_MAX_LENGTH
        or not re.fullmatch(limits.SCHEDULE_NAME_PATTERN, name)
    ):
        raise SpecError(
            f"{path}.name must be a DNS-1123 label of at most {limits.SCHEDULE_NAME_MAX_LENGTH} characters, got {name!r}"
        )
    if not isinstance(cron, str) or len(cron) > limits.CRON_MAX_LENGTH or (why := check_cron(cron)) is not None:
        why = "must be a string" if not isinstance(cron, str) else (why if len(cron) <= limits.CRON_MAX_LENGTH else "is too long")
        raise SpecError(f"{path}.cron {why}, got {cron!r}")
    timezone = item.get("timeZone", "UTC")
    if not isinstance(timezone, str) or len(timezone) > limits.TIMEZONE_MAX_LENGTH:
        raise SpecError(f"{path}.timeZone must be an IANA time zone name, got {timezone!r}")
    try:
        zone(timezone)
    except ScheduleError as exc:
        raise SpecError(f"{path}.timeZone: {exc}") from None
    if not isinstance(task, str) or not re.fullmatch(TASK_NAME_PATTERN, task):
        raise SpecError(f"{path}.task must be a registered task name, got {task!r}")
    args, kwargs = item.get("args", []), item.get("kwargs", {})
    if not isinstance(args, list):
        raise SpecError(f"{path}.args must be an array")
    if not isinstance(kwargs, Mapping):
        raise SpecError(f"{path}.kwargs must be an object")
    missed = _choice(item, "missedSlots", path, limits.MISSED_SLOTS)
    return Schedule(name, cron, task, timezone, tuple(args), dict(kwargs), missed)


def parse_schedules(spec: Mapping[str, Any]) -> tuple[Schedule, ...]:
    """`spec.schedules`: periodic tasks the operator enqueues (`taskq_operator.core.schedules`)."""
    items = spec.get("schedules") or []
    if not isinstance(items, list):
        raise SpecError("spec.schedules must be an array")
    if len(items) > limits.MAX_SCHEDULES:
        raise SpecError(f"spec.schedules may hold at most {limits.MAX_SCHEDULES} schedules, got {len(items)}")
    parsed = tuple(_schedule(item, f"spec.schedules[{i}]") for i, item in enumerate(items))
    names = [s.name for s in parsed]
    if len(set(names)) != len(names):
        raise SpecError("spec.schedules[].name must be unique")
    return parsed


def parse_taskqueue(body: Mapping[str, Any]) -> TaskQueueSpec:
    """Turn a TaskQueue object into `TaskQueueSpec`, or raise `SpecError` naming the bad field."""
    meta = _section(body, "metadata", "")
    spec = _section(body, "spec", "")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name is required")
    if not limits.valid_taskqueue_name(name):
        raise SpecError(
            f"metadata.name must be a DNS-1123 label of at most {limits.TASKQUEUE_NAME_MAX_LENGTH} characters, got {name!r}"
        )
    queue = spec.get("queue") or name
    if not isinstance(queue, str) or not limits.valid_queue_name(queue):
        raise SpecError(
            f"spec.queue must be 1-{limits.QUEUE_NAME_MAX_LENGTH} letters, digits, '_' or '-' "
            f"(no '.', ':' or 'amq.'), got {queue!r}"
        )
    store = _section(spec, "store", "spec")
    database = store.get("database") or "taskq"
    if not isinstance(database, str):
        raise SpecError("spec.store.database must be a string")
    worker = parse_worker(spec)
    tasks = parse_tasks(spec)
    if worker.termination_grace_s < tasks.timeout_s:
        raise SpecError("spec.worker.terminationGracePeriodSeconds must be >= spec.tasks.timeoutSeconds")
    return TaskQueueSpec(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        queue=queue,
        broker_secret=_secret_name(spec, "broker"),
        store_secret=_secret_name(spec, "store"),
        database=database,
        worker=worker,
        scaling=parse_scaling(spec),
        tasks=tasks,
        schedules=parse_schedules(spec),
    )
