"""RabbitMQ for tests, benchmarks and the demo: the broker named by `AMQP_URL`, or a private node.

A private node runs on free loopback ports, with its own node name, Erlang cookie, data, logs, config
and plugins file under one folder, and the management plugin on (statistics every second, for fresh
rates), and its own epmd port. It never touches a system broker on 5672. Two series
(`TASKQ_TEST_RABBITMQ`):

- `4.0` (default): RabbitMQ 4.0 from a Debian trixie root (`taskq_dev.rootfs`, built once into the
  cache), run as a chroot in its own mount and pid namespace (`taskq_dev.chroot`);
  `consumer_timeout` stays at the broker default, as in production.
- `3.10`: the host's Debian 12 `rabbitmq-server` run as the current user, `consumer_timeout` 24 h.

Called by `taskq_dev.services` (pytest fixtures and `taskq-dev services`) and the benchmarks.
"""

from __future__ import annotations

import os
import re
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
from taskq_dev import chroot, ports, rootfs
from taskq_dev.processes import BackgroundProcess
from taskq_dev.service_base import ServiceError

RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
"""Debian's real scripts; `/usr/sbin/rabbitmq-server` only re-runs them as the `rabbitmq` user."""

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CONSUMER_TIMEOUT_MS = 24 * 3600 * 1000
"""Only on the 3.10 node (which ignores the queue argument anyway); 4.0 keeps the broker default."""

SERIES_ENV = "TASKQ_TEST_RABBITMQ"
CHROOT_SERIES = "4.0"
HOST_SERIES = "3.10"
SERIES = (CHROOT_SERIES, HOST_SERIES)
DEFAULT_SERIES = CHROOT_SERIES
CHROOT_DATA = "/var/lib/rabbitmq"
"""Where a chrooted node sees its own data folder (bound from outside the shared root)."""


def selected_series() -> str:
    """The series `TASKQ_TEST_RABBITMQ` asks for (`4.0` when unset)."""
    value = os.environ.get(SERIES_ENV, "").strip() or DEFAULT_SERIES
    if value not in SERIES:
        raise ServiceError(f"{SERIES_ENV}={value!r}: choose one of {', '.join(SERIES)}")
    return value


def version_tuple(version: str) -> tuple[int, ...]:
    """`"4.0.5"` -> `(4, 0, 5)`; a suffix such as `-rc.1` is dropped."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if match is None:
        raise ServiceError(f"not a RabbitMQ version: {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


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
            response = httpx.get(f"{self.management_base}/api/overview", auth=self.management_auth, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    @property
    def version(self) -> str:
        """The running broker's version as its management API reports it (`rabbitmq_version`, e.g. `4.0.5`)."""
        try:
            response = httpx.get(f"{self.management_base}/api/overview", auth=self.management_auth, timeout=10.0)
            response.raise_for_status()
            return str(response.json()["rabbitmq_version"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise ServiceError(f"could not read the RabbitMQ version from {self.management_base}: {type(exc).__name__}") from exc

    @property
    def version_info(self) -> tuple[int, ...]:
        """`version` as numbers, for comparisons: `broker.version_info >= (4, 0)`."""
        return version_tuple(self.version)


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
    """Where a private node keeps everything, which ports it uses and which series it runs (saved by
    `taskq-dev services`)."""

    base_dir: Path
    node_port: int
    dist_port: int
    management_port: int
    series: str = DEFAULT_SERIES
    epmd_port: int = 0
    """The node's own epmd, stopped with it; 0 (records from before) means Erlang's shared default 4369."""

    @property
    def nodename(self) -> str:
        return f"taskq-{self.node_port}@localhost"

    @property
    def chrooted(self) -> bool:
        return self.series == CHROOT_SERIES

    @classmethod
    def allocate(cls, base_dir: Path, series: str | None = None) -> RabbitNodeLayout:
        """A layout on free ports for `series` (default: `selected_series()`); the dist port stays
        below 50000 because the CLI uses it + 10000."""
        chosen = series or selected_series()
        if chosen not in SERIES:
            raise ServiceError(f"unknown RabbitMQ series {chosen!r}: choose one of {', '.join(SERIES)}")
        return cls(
            base_dir=base_dir,
            node_port=ports.free_port(),
            dist_port=ports.free_port(20000, 30000),
            management_port=ports.free_port(),
            series=chosen,
            epmd_port=ports.free_port(),
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
            series=str(record.get("series") or HOST_SERIES),  # records written before 4.0 were 3.10 nodes
            epmd_port=int(record.get("epmd_port") or 0),
        )


def _config_text(layout: RabbitNodeLayout) -> str:
    return "\n".join(
        [
            f"listeners.tcp.1 = {ports.LOOPBACK}:{layout.node_port}",
            f"management.tcp.ip = {ports.LOOPBACK}",
            f"management.tcp.port = {layout.management_port}",
            "collect_statistics_interval = 1000",
            *([] if layout.chrooted else [f"consumer_timeout = {CONSUMER_TIMEOUT_MS}"]),
            "loopback_users = none",
            "log.console = false",
            "log.file.level = warning",
            "",
        ]
    )


class PrivateRabbitMQ(_ManagementAccess):
    """A RabbitMQ node the harness runs itself; `stop`/`start` keep its data (durable queues survive).

    The recorded process is the host's `rabbitmq-server` script (3.10) or the `unshare` wrapping the
    chroot (4.0). Every process of the node carries `chroot.MARKER_ENV` naming the node's folder, so a
    stop can find and kill whatever a crash or a killed session left behind.
    """

    def __init__(self, layout: RabbitNodeLayout) -> None:
        self.layout = layout
        self.amqp_url = f"amqp://guest:guest@{ports.LOOPBACK}:{layout.node_port}/%2F"
        self.management_url = f"http://guest:guest@{ports.LOOPBACK}:{layout.management_port}"
        log_path = layout.base_dir / "log" / "server-stdout.log"
        if layout.chrooted:
            self.root: Path | None = rootfs.RABBITMQ_TRIXIE.root
            argv = self._chroot().argv([f"{RABBITMQ_SCRIPTS}/rabbitmq-server"])
            env = {chroot.MARKER_ENV: str(layout.base_dir)}
        else:
            self.root = None
            argv = [str(RABBITMQ_SCRIPTS / "rabbitmq-server")]
            env = self._env()
        self.process = BackgroundProcess(argv=argv, log_path=log_path, env=env, cwd=layout.base_dir)

    @property
    def external(self) -> bool:
        return False

    @property
    def series(self) -> str:
        return self.layout.series

    def _env(self) -> dict[str, str]:
        """The node's environment, with paths as the node sees them (inside the chroot for 4.0)."""
        base = Path(CHROOT_DATA) if self.layout.chrooted else self.layout.base_dir
        env = {
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
            chroot.MARKER_ENV: str(self.layout.base_dir),
        }
        if self.layout.epmd_port:
            env["ERL_EPMD_PORT"] = str(self.layout.epmd_port)
        if self.layout.chrooted:
            env |= {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        return env

    def _chroot(self) -> chroot.ChrootCommand:
        return chroot.ChrootCommand(
            root=rootfs.RABBITMQ_TRIXIE.root, data=self.layout.base_dir, inner=CHROOT_DATA, env=self._env()
        )

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
        """Run `rabbitmqctl -n NODE args...` against this node (the node's own CLI version)."""
        command = [str(RABBITMQ_SCRIPTS / "rabbitmqctl"), "-n", self.layout.nodename, *args]
        if self.layout.chrooted:
            argv, env = self._chroot().argv(command), dict(os.environ)
        else:
            argv, env = command, {**os.environ, **self._env()}
        try:
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
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
                f"RabbitMQ node {self.layout.nodename} did not start: {' '.join(detail)}\n{self.process.log_tail()}"
            )

    def _check_installed(self) -> None:
        if self.layout.chrooted:
            if shutil.which("unshare") is None:
                raise ServiceError("`unshare` (util-linux) is needed to run RabbitMQ 4.0 from its Debian trixie root")
            self.root = rootfs.ensure_root(rootfs.RABBITMQ_TRIXIE)  # built on first use (~1 min)
        elif not (RABBITMQ_SCRIPTS / "rabbitmq-server").exists():
            raise ServiceError(
                "RabbitMQ is not installed: run `apt-get install rabbitmq-server` "
                f"(or set AMQP_URL to a broker to use, or {SERIES_ENV}={CHROOT_SERIES})"
            )

    def _wait_ready(self, started: float) -> None:
        deadline = started + STARTUP_TIMEOUT
        if self.layout.chrooted:
            # no CLI call: an Erlang CLI start costs seconds; AMQP accepting means the broker has booted
            ports.wait_until(
                lambda: ports.port_accepts(self.layout.node_port),
                timeout=STARTUP_TIMEOUT,
                what=f"RabbitMQ node {self.layout.nodename} to accept AMQP on port {self.layout.node_port}",
                give_up=self._exited,
            )
        else:
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

    def start(self) -> float:
        """Start the node and wait until AMQP and the management API answer; return seconds taken.

        The first start of a 4.0 node on a machine also builds the trixie root (about a minute more).
        """
        self._check_installed()
        if self.process.alive():
            return 0.0
        self._kill_strays()
        self.pid_file.unlink(missing_ok=True)
        taken = [self.layout.node_port, self.layout.dist_port, self.layout.management_port, self.layout.epmd_port]
        for port in taken:
            if port and not ports.port_is_free(port):
                raise ServiceError(f"port {port} of RabbitMQ node {self.layout.nodename} is taken")
        self._write_files()
        started = time.monotonic()
        self.process.start()
        try:
            self._wait_ready(started)
        except ServiceError:
            self.stop()
            raise
        except ports.WaitTimeout as exc:
            self.stop()
            raise ServiceError(str(exc)) from exc
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the node gracefully (messages in durable queues are kept on disk), then kill any stray.

        SIGTERM to the foreground `rabbitmq-server` script makes it stop the node the way
        `rabbitmqctl stop` does, without paying for another Erlang CLI start. For 4.0 that script is
        the first process of the node's pid namespace; its exit ends the namespace and its mounts.
        """
        if self.layout.chrooted:
            chroot.stop_namespace(self.process, STOP_TIMEOUT)
        else:
            self.process.terminate(STOP_TIMEOUT)
        self._kill_strays()

    def stray_pids(self) -> list[int]:
        """Processes of this node still running (none after `stop`); a shared epmd on 4369 does not count."""
        return [pid for pid in chroot.marked_processes(self.layout.base_dir) if not chroot.is_shared_epmd(pid)]

    def _kill_strays(self) -> None:
        strays = self.stray_pids()
        if not strays:
            return
        chroot.kill_pids(strays)
        try:
            ports.wait_until(
                lambda: not self.stray_pids() and all(chroot.has_exited(pid) for pid in strays),
                timeout=10.0,
                what=f"stray processes {strays} to exit",
            )
        except ports.WaitTimeout as exc:
            raise ServiceError(str(exc)) from exc

    def close(self) -> None:
        """Stop the node and delete its folder."""
        self.stop()
        shutil.rmtree(self.layout.base_dir, ignore_errors=True)
