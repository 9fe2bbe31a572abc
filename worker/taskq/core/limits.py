"""Limits: the one table of what a TaskQueue, a worker and a producer accept, and the arithmetic of a worker's limits.

The table (below the arithmetic) is what crds/taskqueue.yaml, the operator's spec parser, `taskq.settings`
and `taskq.core.message` use; tests/unit/test_limits_crd.py and tests/cluster/test_crd_contract.py keep
the CRD in step with it.

The arithmetic: which timeout and retry count apply, prefetch, consumer timeout, lease.

Precedence (one table in the README): the producer's per-message value, then the task decorator's,
then the worker's own (`TASKQ_MAX_RETRIES`, `TASKQ_TASK_TIMEOUT`, set from the TaskQueue's
`spec.tasks`); the first one given is the default and every later one is a cap, so a worker never
honours more than its own limit. Pure; used by the worker runtime and the operator's docs/tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONSUMER_TIMEOUT_MARGIN_S = 60.0
"""Slack on top of the worst case: group commit, a slow store write, the ack's round trip."""


@dataclass(frozen=True)
class AttemptLimits:
    """What one attempt of one task may use, after precedence."""

    timeout_s: float
    max_retries: int


def first_capped(values: tuple[float | None, ...], limit: float) -> float:
    """The smallest of the given `values` and `limit` (None means "not given")."""
    return min([v for v in values if v is not None] + [limit])


def attempt_limits(
    *,
    message_timeout: float | None,
    message_retries: int | None,
    task_timeout: float | None,
    task_retries: int | None,
    worker_timeout: float,
    worker_retries: int,
) -> AttemptLimits:
    """The timeout and retry count an attempt gets (message <= decorator <= worker)."""
    return AttemptLimits(
        timeout_s=first_capped((message_timeout, task_timeout), worker_timeout),
        max_retries=int(first_capped((message_retries, task_retries), worker_retries)),
    )


def kill_grace_s(timeout_s: float) -> float:
    """How long after the soft timeout signal a task's process is killed: 10 % of the timeout, 1–10 s."""
    return min(10.0, max(1.0, 0.1 * timeout_s))


def default_prefetch(concurrency: int) -> int:
    """Prefetch when none is set: one message per slot plus a look-ahead of one per slot.

    The look-ahead hides the ack → next delivery round trip after each task; more than that only
    makes messages wait in this worker that another worker could run (and may run into the lease
    below).
    """
    return 2 * concurrency


LEASE_MARGIN_S = 15.0
"""How long before the broker's consumer timeout a waiting delivery is handed back (ack latency, slack)."""


def queue_consumer_timeout_ms(timeout_s: float) -> int:
    """The work queue's `x-consumer-timeout` for tasks of at most `timeout_s`: two attempts plus a margin.

    RabbitMQ 4.0 counts the timeout from delivery and reads it only from the queue (argument or
    policy, the smaller) or the broker's `consumer_timeout`; a per-consumer argument is ignored
    there. A delivery may wait for a slot for at most `lease_s` (see below) and then run one attempt,
    so delivery → ack stays under this value whatever the prefetch.
    """
    attempt_s = timeout_s + kill_grace_s(timeout_s)
    return int((2 * attempt_s + CONSUMER_TIMEOUT_MARGIN_S) * 1000)


def lease_s(timeout_s: float) -> float:
    """How long a delivery may wait in a worker before it starts; after that it goes back to the queue.

    With the default look-ahead (one per slot) a waiting delivery starts within one attempt, so the
    lease never runs out; with a larger prefetch the oldest waiting deliveries are returned unstarted
    (never run twice) before `queue_consumer_timeout_ms` could close the channel.
    """
    return queue_consumer_timeout_ms(timeout_s) / 1000 - (timeout_s + kill_grace_s(timeout_s)) - LEASE_MARGIN_S


# ---------------------------------------------------------------------------------------------------
# What a TaskQueue, a worker and a producer accept: one table for the CRD (crds/taskqueue.yaml), the
# operator's spec parser, the worker's settings and the producer's messages. tests/unit/test_limits_crd.py
# checks the CRD's schema against these values; tests/cluster/test_crd_contract.py walks each limit on a
# real API server (just inside: accepted, parsed, worker settings and Deployment accepted; just outside:
# rejected with a message).
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntRange:
    """An inclusive range of an integer setting."""

    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class NumberRange:
    """A range of a number setting: `low < value` when `low_exclusive`, else `low <= value`; `value <= high`."""

    low: float
    high: float
    low_exclusive: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        above = value > self.low if self.low_exclusive else value >= self.low
        return above and value <= self.high


# --- worker runtime (spec.worker, TASKQ_* of taskq-worker) ---
CONCURRENCY = IntRange(1, 1024)
DEFAULT_CONCURRENCY = 4
PREFETCH = IntRange(1, 10_000)
"""At least `concurrency` in a TaskQueue (a smaller prefetch leaves slots idle); AMQP allows up to 65,535."""
MAX_TASKS_PER_CHILD = IntRange(0, 1_000_000)
MAX_MEMORY_PER_CHILD_MIB = IntRange(0, 1_048_576)
TERMINATION_GRACE_S = IntRange(1, 86_400)
DEFAULT_TERMINATION_GRACE_S = 330

# --- tasks (spec.tasks; the worker's caps; a producer's per-message values) ---
MAX_RETRIES = IntRange(0, 100)
MAX_DELIVERIES = IntRange(1, 100)
MAX_PRIORITY = IntRange(0, 255)
QUORUM_MAX_PRIORITY = 10
"""The only `maxPriority` of a quorum queue (two fixed levels; no `x-max-priority`)."""
MAX_TIMEOUT_S = 7 * 24 * 3600.0
"""The longest attempt a worker or a message may ask for."""
TASKQUEUE_TIMEOUT_S = IntRange(1, TERMINATION_GRACE_S.high)
"""A TaskQueue's `spec.tasks.timeoutSeconds`: whole seconds, within a pod's grace period (which must cover it)."""
RETRY_DELAY_S = NumberRange(0.0, 86_400.0, low_exclusive=True)
"""Backoff `initial`/`max`: above 0 (a 0 s retry bucket spins), at most a day (its delay queue's TTL,
`2**17` s rounded up, stays far below RabbitMQ's 2**32 ms message TTL limit)."""
RETRY_FACTOR = NumberRange(1.0, 10.0)
"""At most 10: `initial * factor**64` (the capped exponent) stays a finite float."""
RESULT_TTL_S = IntRange(0, 10 * 365 * 86_400)
"""How long a finished task's document is kept (`spec.tasks.resultTTLSeconds`, `TASKQ_RESULT_TTL`); 0 keeps it forever."""
DEFAULT_RESULT_TTL_S = 7 * 86_400

# --- scaling (spec.scaling, spec.replicas; the operator only) ---
REPLICAS = IntRange(0, 1000)
MIN_REPLICAS = IntRange(0, 1000)
MAX_REPLICAS = IntRange(1, 1000)
TASKS_PER_REPLICA = IntRange(1, 1_000_000)
DEFAULT_TASKS_PER_REPLICA = 100
"""Applied by the operator's parser when a TaskQueue sets neither `tasksPerReplica` nor `targetWaitSeconds`."""
TARGET_WAIT_S = NumberRange(0.0, 86_400.0, low_exclusive=True)
"""`spec.scaling.targetWaitSeconds`: the expected wait of a new task to stay under; above 0, at most a day."""
ACTIVATION_BACKLOG = IntRange(0, 1_000_000)
POLL_INTERVAL_S = IntRange(1, 300)
STABILIZATION_WINDOW_S = IntRange(0, 3600)
MAX_STEP_PODS = IntRange(1, 1000)
MAX_STEP_PERCENT_UP = IntRange(0, 1000)
MAX_STEP_PERCENT_DOWN = IntRange(0, 100)

TASKQUEUE_RANGES: dict[str, IntRange | NumberRange] = {
    "spec.replicas": REPLICAS,
    "spec.worker.concurrency": CONCURRENCY,
    "spec.worker.prefetch": PREFETCH,
    "spec.worker.maxTasksPerChild": MAX_TASKS_PER_CHILD,
    "spec.worker.maxMemoryPerChildMiB": MAX_MEMORY_PER_CHILD_MIB,
    "spec.worker.terminationGracePeriodSeconds": TERMINATION_GRACE_S,
    "spec.tasks.maxRetries": MAX_RETRIES,
    "spec.tasks.timeoutSeconds": TASKQUEUE_TIMEOUT_S,
    "spec.tasks.maxPriority": MAX_PRIORITY,
    "spec.tasks.maxDeliveries": MAX_DELIVERIES,
    "spec.tasks.retryBackoff.initialSeconds": RETRY_DELAY_S,
    "spec.tasks.retryBackoff.maxSeconds": RETRY_DELAY_S,
    "spec.tasks.retryBackoff.factor": RETRY_FACTOR,
    "spec.tasks.resultTTLSeconds": RESULT_TTL_S,
    "spec.scaling.minReplicas": MIN_REPLICAS,
    "spec.scaling.maxReplicas": MAX_REPLICAS,
    "spec.scaling.fallbackReplicas": MIN_REPLICAS,
    "spec.scaling.tasksPerReplica": TASKS_PER_REPLICA,
    "spec.scaling.targetWaitSeconds": TARGET_WAIT_S,
    "spec.scaling.activationBacklog": ACTIVATION_BACKLOG,
    "spec.scaling.pollIntervalSeconds": POLL_INTERVAL_S,
    "spec.scaling.scaleUp.stabilizationWindowSeconds": STABILIZATION_WINDOW_S,
    "spec.scaling.scaleUp.maxStepPods": MAX_STEP_PODS,
    "spec.scaling.scaleUp.maxStepPercent": MAX_STEP_PERCENT_UP,
    "spec.scaling.scaleDown.stabilizationWindowSeconds": STABILIZATION_WINDOW_S,
    "spec.scaling.scaleDown.maxStepPods": MAX_STEP_PODS,
    "spec.scaling.scaleDown.maxStepPercent": MAX_STEP_PERCENT_DOWN,
}
"""Every integer and number field of a TaskQueue's spec and its range (the CRD's minimum, maximum, exclusiveMinimum)."""

# --- names ---
QUEUE_NAME_MAX_LENGTH = 200
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$"
"""Letters, digits, `_` and `-`: taskq names its own queues `Q.retry.<ms>` and `Q.dead` and RabbitMQ
reserves `amq.*`, so a name without `.` (or `:`) can collide with none of them."""
LABEL_VALUE_MAX_LENGTH = 63
WORKER_DEPLOYMENT_SUFFIX = "-worker"
TASKQUEUE_NAME_MAX_LENGTH = LABEL_VALUE_MAX_LENGTH - len(WORKER_DEPLOYMENT_SUFFIX)
"""56: the worker Deployment `<name>-worker` and the `app.kubernetes.io/instance` label both fit 63."""
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A TaskQueue's name (also its default queue): lowercase letters, digits and `-`."""
DNS_SUBDOMAIN_MAX_LENGTH = 253
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""Secret and ConfigMap names."""
DATABASE_MAX_LENGTH = 63
DATABASE_PATTERN = r"^[A-Za-z0-9_-]+$"
TASK_MODULE_MAX_LENGTH = 200
TASK_MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
MAX_TASK_MODULES = 64

# --- Kubernetes fields the worker Deployment carries (what its pods' validation accepts) ---
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A label key, taint key or extended resource name: `[prefix/]name`, the name at most 63 characters."""
QUALIFIED_PREFIX_LENGTH_PATTERN = r"^([^/]{1,253}/)?[^/]*$"
"""... and its prefix (a DNS subdomain) at most 253."""
MAX_NODE_SELECTOR = 64
MAX_TOLERATIONS = 50
TOLERATION_OPERATORS = ("Exists", "Equal")
TAINT_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")

MAX_ENV = 100
ENV_NAME_MAX_LENGTH = 256
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
RESERVED_ENV_PREFIX = "TASKQ_"
"""Every `TASKQ_*` variable of a worker is the operator's (settings from the spec, the Secrets' URLs)."""
RESERVED_ENV_NAMES = ("POD_NAME",)
"""... and `POD_NAME`, the worker's id (heartbeats, pod-deletion cost)."""
CONFIG_KEY_MAX_LENGTH = 253
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
ENV_FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
)
ENV_RESOURCE_FIELDS = (
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
)

STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
"""Resource names a worker may request; any other must be an extended resource `<domain>/<name>`
(outside `kubernetes.io`, whole numbers, request equal to limit). Huge pages are not offered."""
MAX_RESOURCES = 16
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""A non-negative Kubernetes quantity (`100m`, `1.5Gi`, `2`)."""
QUANTITY_MAX_LENGTH = 64
"""Bounds the CEL rules' cost estimate (the API server refuses a CRD whose rules could cost too much)."""

IMAGE_MAX_LENGTH = 512
_PATH_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(\.{_DOMAIN_COMPONENT})*(:[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_PATTERN = rf"^({_DOMAIN}/)?{_PATH_COMPONENT}(/{_PATH_COMPONENT})*(:{_TAG})?(@{_DIGEST})?$"
"""An image reference a kubelet can pull: `[registry[:port]/]path[:tag][@digest]`, lowercase path."""


# --- periodic tasks (`spec.schedules`, enqueued by the operator) ---
MAX_SCHEDULES = 50
SCHEDULE_NAME_MAX_LENGTH = 50
"""A slot's task id `<taskqueue>.<schedule>.<YYYYmmddTHHMMSSZ>` stays within a task id's 128 characters."""
SCHEDULE_NAME_PATTERN = DNS_LABEL_PATTERN
CRON_MAX_LENGTH = 100
TIMEZONE_MAX_LENGTH = 64
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
MISSED_SLOTS = ("skip", "catchUp")


def _cron_field(value: str) -> str:
    item = rf"(\*|({value})(-({value}))?)(/[0-9]{{1,2}})?"
    return rf"{item}(,{item})*"


CRON_PATTERN = (
    r"^"
    + r" +".join(
        _cron_field(value)
        for value in (
            r"[0-5]?[0-9]",
            r"[01]?[0-9]|2[0-3]",
            r"0?[1-9]|[12][0-9]|3[01]",
            r"0?[1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)",
            r"[0-7]|(?i:sun|mon|tue|wed|thu|fri|sat)",
        )
    )
    + r"$"
)
"""Five cron fields separated by spaces (minute, hour, day of month, month, day of week): `*`, numbers in range, names,
lists, ranges and steps. The CRD's CEL rule; the operator's parser then asks croniter (steps of 0...)."""


def reserved_env_name(name: str) -> bool:
    """Whether a worker's `spec.worker.env` may not set `name` (the operator sets it)."""
    return name.startswith(RESERVED_ENV_PREFIX) or name in RESERVED_ENV_NAMES


def valid_taskqueue_name(name: str) -> bool:
    """Whether `name` fits everything named after a TaskQueue (Deployment, labels, default queue)."""
    return len(name) <= TASKQUEUE_NAME_MAX_LENGTH and re.fullmatch(DNS_LABEL_PATTERN, name) is not None


def valid_queue_name(name: str) -> bool:
    """Whether `name` can be a taskq queue (no `.`/`:`, so no collision with `Q.retry.<ms>`, `Q.dead`, `amq.*`)."""
    return re.fullmatch(QUEUE_NAME_PATTERN, name) is not None
