"""Free loopback ports and bounded waiting, for the harness services.

Called by `taskq_dev.rabbitmq` and `taskq_dev.mongo` when they start private servers.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


class WaitTimeout(RuntimeError):
    """A bounded wait ran out of time; the message says what was awaited."""


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether nothing listens on `host:port` and we could bind it now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # like the servers themselves: connections in TIME_WAIT from a previous run do not count
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(low: int | None = None, high: int | None = None, host: str = LOOPBACK) -> int:
    """A port nothing listens on: one the kernel picks, or a random one in `[low, high)`.

    A range is for ports from which a server derives others (RabbitMQ's CLI uses dist port + 10000).
    """
    if low is None or high is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
            return port
    for _ in range(200):
        candidate = random.randrange(low, high)
        if port_is_free(candidate, host):
            return candidate
    raise OSError(f"no free port in [{low}, {high}) on {host} after 200 tries")


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to `host:port` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    give_up: Callable[[], str | None] | None = None,
) -> float:
    """Poll `condition` until it is true or `timeout` seconds pass; return the seconds waited.

    `give_up` is checked on each round; a non-empty string it returns aborts the wait early with that
    reason (for example: the server process exited).
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if condition():
            return time.monotonic() - started
        if give_up is not None:
            reason = give_up()
            if reason:
                raise WaitTimeout(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def poll(probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `probe` until it returns something truthy (bounded by `timeout` seconds) and return that.

    The value-returning twin of `wait_until`, for callers that need what they waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
