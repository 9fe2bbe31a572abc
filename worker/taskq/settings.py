"""Settings a worker, a producer and the HTTP service read from the environment (`TASKQ_*`).

The table of variables is in docs/architecture.md. Credentials stay inside the URLs and are never
printed: `Settings.__repr__` hides them.
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskq.core import limits
from taskq.core.limits import MAX_TIMEOUT_S, default_prefetch
from taskq.core.retry import RetryPolicy
from taskq.errors import redact_url


def _default_worker_id() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Everything configurable about a taskq process, with production-sane defaults."""

    model_config = SettingsConfigDict(env_prefix="TASKQ_", extra="ignore")

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    mongodb_uri: str = "mongodb://127.0.0.1:27017/"
    # The RabbitMQ management API (`http://user:pass@host:15672`), for the dashboard's rates; unset: none shown.
    management_url: str | None = None
    database: str = "taskq"
    queue: str = Field(default="default", pattern=limits.QUEUE_NAME_PATTERN)
    task_modules: str = ""
    # None: `taskq.core.limits.default_prefetch(concurrency)` (one per slot plus a look-ahead of one per slot).
    prefetch: int | None = Field(default=None, ge=limits.PREFETCH.low, le=limits.PREFETCH.high)
    concurrency: int = Field(default=limits.DEFAULT_CONCURRENCY, ge=limits.CONCURRENCY.low, le=limits.CONCURRENCY.high)
    pool: Literal["process", "thread", "asyncio"] = "process"
    max_tasks_per_child: int = Field(default=0, ge=limits.MAX_TASKS_PER_CHILD.low, le=limits.MAX_TASKS_PER_CHILD.high)
    max_memory_per_child_mb: int = Field(
        default=0, ge=limits.MAX_MEMORY_PER_CHILD_MIB.low, le=limits.MAX_MEMORY_PER_CHILD_MIB.high
    )
    # The worker's limits: the default for tasks that set nothing, and a cap on what they set.
    max_retries: int = Field(default=3, ge=limits.MAX_RETRIES.low, le=limits.MAX_RETRIES.high)
    task_timeout: float = Field(default=300.0, gt=0, le=MAX_TIMEOUT_S)
    max_deliveries: int = Field(default=5, ge=limits.MAX_DELIVERIES.low, le=limits.MAX_DELIVERIES.high)
    queue_type: Literal["classic", "quorum"] = "classic"
    retry_initial: float = Field(default=1.0, gt=limits.RETRY_DELAY_S.low, le=limits.RETRY_DELAY_S.high)
    retry_max: float = Field(default=300.0, gt=limits.RETRY_DELAY_S.low, le=limits.RETRY_DELAY_S.high)
    retry_factor: float = Field(default=2.0, ge=limits.RETRY_FACTOR.low, le=limits.RETRY_FACTOR.high)
    max_priority: int = Field(default=10, ge=limits.MAX_PRIORITY.low, le=limits.MAX_PRIORITY.high)
    # Finished tasks older than this (seconds) are deleted by `taskq expire` / `Client.expire_finished`
    # (the operator uses each TaskQueue's spec.tasks.resultTTLSeconds); 0 keeps them.
    result_ttl: int = Field(default=limits.DEFAULT_RESULT_TTL_S, ge=limits.RESULT_TTL_S.low, le=limits.RESULT_TTL_S.high)
    grace_seconds: float = Field(default=30.0, ge=0)
    health_port: int = Field(default=8080, ge=0, le=65535)
    worker_id: str = Field(default_factory=_default_worker_id)

    @field_validator("worker_id")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        return value or _default_worker_id()

    def task_module_list(self) -> list[str]:
        """The task modules to import, from the comma-separated setting."""
        return [name.strip() for name in self.task_modules.split(",") if name.strip()]

    @property
    def effective_prefetch(self) -> int:
        """The prefetch the worker asks for: the setting, or the default for its concurrency."""
        return self.prefetch if self.prefetch is not None else default_prefetch(self.concurrency)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(initial_s=self.retry_initial, max_s=self.retry_max, factor=self.retry_factor)

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for key, value in super().__repr_args__():
            if key in ("amqp_url", "mongodb_uri", "management_url") and isinstance(value, str):
                value = redact_url(value)
            yield key, value
