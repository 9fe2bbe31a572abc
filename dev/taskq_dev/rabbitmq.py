"""RabbitMQ for tests, benchmarks and the demo: the broker named by `AMQP_URL`, or a private node.

A private node is Debian's `rabbitmq-server` run as the current user on free loopback ports, with its
own node name, Erlang cookie, data, logs, config and plugins file under one folder, and the
management plugin on (statistics every second, for fresh rates). It never touches a system broker
on 5672. Called by `taskq_dev.services` (pytest fixtures and `taskq-dev services`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from taskq.errors import redact_url
from taskq_dev import ports
from taskq_dev.processes import BackgroundProcess
from taskq_dev.service_base import ServiceError

RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
"""Debian's real scripts; `/usr/sbin/rabbitmq-server` only re-runs them as the `rabbitmq` user."""

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CONSUMER_TIMEOUT_MS = 24 * 3600 * 1000


def management_url_for(amqp_url: str, management_port: int = 15672) -> str:
    """The management API base URL with the AMQP URL's host and credentials."""
    parts = urlsplit(amqp_url)
    user = unquote(parts.username or "guest")
    password = unquote(parts.password or "guest")
    host = parts.hostname or ports.LOOPBACK
    return f"http://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{management_port}"


def split_credentials(url: str) -> tuple[str, tuple[str, str]]:
    """`(url without credentials, (user, password))` for an HTTP client."""
    parts = urlsplit(url)
    host = parts.hostname or ports.LOOPBACK
    netloc = f"{host}:{parts.port}" if parts.port else host
    base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
    return base, (unquote(parts.username or "guest"), unquote(parts.password or "guest"))


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names (`/` when the path is empty)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class _ManagementAccess:
    """Shared by both kinds of broker: the management URL split for HTTP clients."""

    amqp_url: str
    management_url: str

    @property
    def management_base(self) -> str:
        """The management API base URL without credentials (safe to print)."""
        return split_credentials(self.management_url)[0]

    @property
    def management_auth(self) -> tuple[str, str]:
        """`(user, password)` for the management API."""
        return split_credentials(self.management_url)[1]

    @property
    def vhost(self) -> str:
        return vhost_of(self.amqp_url)

    def management_answers(self) -> bool:
        """Whether `GET /api/overview` succeeds now."""
        try:
            response = httpx.get(
                f"{self.management_base}/api/overview", auth=self.management_auth, timeout=2.0
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200


class ExternalRabbitMQ(_ManagementAccess):
    """A broker named by the environment; the harness never stops or deletes it."""

    def __init__(self, amqp_url: str, management_url: str | None = None) -> None:
        self.amqp_url = amqp_url
        self.management_url = management_url or management_url_for(amqp_url)

    @property
    def external(self) -> bool:
        return True

    def start(self) -> float:
        raise ServiceError(f"cannot start the external broker {redact_url(self.amqp_url)}")

    def stop(self) -> None:
        raise ServiceError(f"cannot stop the external broker {redact_url(self.amqp_url)}")

    def close(self) -> None:
        """Nothing to do: the broker belongs to whoever set `AMQP_URL`."""


@dataclass(frozen=True)
class RabbitNodeLayout:
    """Where a private node keeps everything and which ports it uses (saved by `taskq-dev services`)."""

    base_dir: Path
    node_port: int
    dist_port: int
    management_port: int

    @property
    def nodename(self) -> str:
        return f"taskq-{self.node_port}@localhost"

    @classmethod
    def allocate(cls, base_dir: Path) -> RabbitNodeLayout:
        """A layout on free ports; the dist port stays below 50000 because the CLI uses it + 10000."""
        return cls(
            base_dir=base_dir,
            node_port=ports.free_port(),
            dist_port=ports.free_port(20000, 30000),
            management_port=ports.free_port(),
        )

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "base_dir": str(self.base_dir)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RabbitNodeLayout:
        return cls(
            base_dir=Path(record["base_dir"]),
            node_port=int(record["node_port"]),
            dist_port=int(record["dist_port"]),
            management_port=int(record["management_port"]),
        )


def _config_text(layout: RabbitNodeLayout) -> str:
    return "\n".join(
        [
            f"listeners.tcp.1 = {ports.LOOPBACK}:{layout.node_port}",
            f"management.tcp.ip = {ports.LOOPBACK}",
            f"management.tcp.port = {layout.management_port}",
            "collect_statistics_interval = 1000",
            f"consumer_timeout = {CONSUMER_TIMEOUT_MS}",
            "loopback_users = none",
            "log.console = false",
            "log.file.level = warning",
            "",
        ]
    )


class PrivateRabbitMQ(_ManagementAccess):
    """A RabbitMQ node the harness runs itself; `stop`/`start` keep its data (durable queues survive)."""

    def __init__(self, layout: RabbitNodeLayout) -> None:
        self.layout = layout
        self.amqp_url = f"amqp://guest:guest@{ports.LOOPBACK}:{layout.node_port}/%2F"
        self.management_url = f"http://guest:guest@{ports.LOOPBACK}:{layout.management_port}"
        self.process = BackgroundProcess(
            argv=[str(RABBITMQ_SCRIPTS / "rabbitmq-server")],
            log_path=layout.base_dir / "log" / "server-stdout.log",
            env=self._env(),
            cwd=layout.base_dir,
        )

    @property
    def external(self) -> bool:
        return False

    def _env(self) -> dict[str, str]:
        base = self.layout.base_dir
        return {
            "HOME": str(base),  # the Erlang cookie lives in $HOME: private to this node and its CLI
            "RABBITMQ_NODENAME": self.layout.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": ports.LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.layout.node_port),
            "RABBITMQ_DIST_PORT": str(self.layout.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
        }

    def _write_files(self) -> None:
        base = self.layout.base_dir
        for folder in (base, base / "mnesia", base / "log"):
            folder.mkdir(parents=True, exist_ok=True)
        cookie = base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)
        (base / "rabbitmq-env.conf").write_text("# private taskq-dev node: settings come from the environment\n")
        (base / "rabbitmq.conf").write_text(_config_text(self.layout))
        (base / "enabled_plugins").write_text("[rabbitmq_management].\n")

    def ctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `rabbitmqctl -n NODE args...` against this node."""
        try:
            return subprocess.run(
                [str(RABBITMQ_SCRIPTS / "rabbitmqctl"), "-n", self.layout.nodename, *args],
                env={**os.environ, **self._env()},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"rabbitmqctl {' '.join(args)} took more than {timeout:.0f} s") from exc

    def _exited(self) -> str | None:
        if self.process.alive():
            return None
        return f"rabbitmq-server exited; log tail:\n{self.process.log_tail()}"

    @property
    def pid_file(self) -> Path:
        return self.layout.base_dir / "mnesia" / f"{self.layout.nodename}.pid"

    def _await_startup(self, deadline: float) -> None:
        """One blocking `rabbitmqctl await_startup` (each CLI call costs seconds of Erlang start-up)."""
        remaining = max(int(deadline - time.monotonic()), 5)
        result = self.ctl("await_startup", "--timeout", str(remaining), timeout=remaining + 15.0)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ServiceError(
                f"RabbitMQ node {self.layout.nodename} did not start: {' '.join(detail)}\n"
                f"{self.process.log_tail()}"
            )

    def start(self) -> float:
        """Start the node and wait until AMQP and the management API answer; return seconds taken."""
        if not (RABBITMQ_SCRIPTS / "rabbitmq-server").exists():
            raise ServiceError(
                "RabbitMQ is not installed: run `apt-get install rabbitmq-server` "
                "(or set AMQP_URL to a broker to use)"
            )
        if self.process.alive():
            return 0.0
        self.pid_file.unlink(missing_ok=True)
        for port in (self.layout.node_port, self.layout.dist_port, self.layout.management_port):
            if not ports.port_is_free(port):
                raise ServiceError(f"port {port} of RabbitMQ node {self.layout.nodename} is taken")
        self._write_files()
        started = time.monotonic()
        self.process.start()
        deadline = started + STARTUP_TIMEOUT
        try:
            ports.wait_until(
                self.pid_file.exists,
                timeout=STARTUP_TIMEOUT,
                what=f"RabbitMQ node {self.layout.nodename} to write its pid file",
                give_up=self._exited,
            )
            self._await_startup(deadline)
            ports.wait_until(
                self.management_answers,
                timeout=max(deadline - time.monotonic(), 5.0),
                what=f"RabbitMQ management API on port {self.layout.management_port}",
                give_up=self._exited,
            )
        except ServiceError:
            self.stop()
            raise
        except ports.WaitTimeout as exc:
            self.stop()
            raise ServiceError(str(exc)) from exc
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the node gracefully (messages in durable queues are kept on disk).

        SIGTERM to the foreground `rabbitmq-server` script makes it stop the node the way
        `rabbitmqctl stop` does, without paying for another Erlang CLI start.
        """
        self.process.terminate(STOP_TIMEOUT)

    def close(self) -> None:
        """Stop the node and delete its folder."""
        self.stop()
        shutil.rmtree(self.layout.base_dir, ignore_errors=True)
