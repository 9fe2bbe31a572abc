"""What every harness service shares: its error type and the start/stop/close shape.

Imported by `taskq_dev.rabbitmq`, `taskq_dev.mongo` and `taskq_dev.services`.
"""

from __future__ import annotations

from typing import Protocol

from taskq.errors import TaskqError


class ServiceError(TaskqError):
    """A harness service could not be started, reached or stopped (messages never carry passwords)."""


class Service(Protocol):
    """A server the harness either runs itself (restartable) or was pointed at by the environment."""

    @property
    def external(self) -> bool:
        """True when the environment named the server; then `stop`/`start` are refused."""
        ...

    def start(self) -> float:
        """Start (again, with the same ports and data) and wait until usable; return seconds taken."""
        ...

    def stop(self) -> None:
        """Stop the server but keep its data, so `start` brings the same state back."""
        ...

    def close(self) -> None:
        """Stop the server and delete its data (a no-op for an external server)."""
        ...
