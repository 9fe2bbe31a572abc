"""The private RabbitMQ nodes of the test tooling, started for real: 4.0 from the trixie root (default) and 3.10.

Each test runs its own nodes in a temporary folder (not the session's broker) and checks what the
rest of the suite relies on: the version, the broker's own consumer timeout, durable data across a
restart, two nodes from one root at once, and that stopping or losing a node's owner leaves no
process and no mount behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from taskq_dev import chroot, ports, rootfs, services
from taskq_dev.rabbitmq import CHROOT_SERIES, HOST_SERIES, PrivateRabbitMQ, RabbitNodeLayout, selected_series
from taskq_dev.service_base import ServiceError
from taskq_dev.services import RabbitMQService

pytestmark = [pytest.mark.services, pytest.mark.slow]

ERLANG_DEFAULT_CONSUMER_TIMEOUT_MS = 1_800_000
"""RabbitMQ's default `consumer_timeout` (30 min): what the 4.0 node must keep."""


def _no_trace_of(node: PrivateRabbitMQ) -> None:
    """Nothing of the node is left: no marked process, no process in the root with its data, no mount."""
    assert node.stray_pids() == []
    assert node.process.pid is None or not node.process.alive()
    mounts = Path("/proc/mounts").read_text()
    assert str(node.layout.base_dir) not in mounts
    assert str(rootfs.RABBITMQ_TRIXIE.root) not in mounts
    ours = set(chroot.marked_processes(node.layout.base_dir))
    assert ours.isdisjoint(rootfs.processes_rooted_in(rootfs.RABBITMQ_TRIXIE.root))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[PrivateRabbitMQ]]:
    """A list the test appends its nodes to; every one is closed (and checked for leftovers) afterwards."""
    started: list[PrivateRabbitMQ] = []
    yield started
    for node in started:
        node.close()
    for node in started:
        _no_trace_of(node)


def _node(nodes: list[PrivateRabbitMQ], base: Path, series: str) -> PrivateRabbitMQ:
    node = PrivateRabbitMQ(RabbitNodeLayout.allocate(base, series))
    nodes.append(node)
    node.start()
    return node


def _publish(amqp_url: str, queue: str, bodies: list[bytes]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=True)
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def _drain(amqp_url: str, queue: str) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    got: list[bytes] = []
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for _ in range(100):
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            got.append(bytes(body))
    finally:
        connection.close()
    return got


def _consumer_timeout_ms(node: PrivateRabbitMQ) -> str:
    result = node.ctl("eval", "application:get_env(rabbit, consumer_timeout).", timeout=90)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_series_selection_defaults_to_4_0_and_refuses_unknown_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKQ_TEST_RABBITMQ", raising=False)
    assert selected_series() == CHROOT_SERIES == "4.0"
    monkeypatch.setenv("TASKQ_TEST_RABBITMQ", "3.10")
    assert selected_series() == HOST_SERIES
    monkeypatch.setenv("TASKQ_TEST_RABBITMQ", "3.12")
    with pytest.raises(ServiceError, match="3.12"):
        selected_series()


def test_4_0_node_reports_4_0_and_keeps_the_broker_default_consumer_timeout(nodes: list[PrivateRabbitMQ], tmp_path: Path) -> None:
    node = _node(nodes, tmp_path / "a", CHROOT_SERIES)
    assert node.version.startswith("4.0.") and node.version_info[:2] == (4, 0)
    assert "consumer_timeout" not in (node.layout.base_dir / "rabbitmq.conf").read_text()
    assert _consumer_timeout_ms(node) == f"{{ok,{ERLANG_DEFAULT_CONSUMER_TIMEOUT_MS}}}"
    assert rootfs.is_built(rootfs.RABBITMQ_TRIXIE)
    # the node runs chrooted in the shared root (what `_no_trace_of` and `sweep_old_roots` look for)
    assert set(node.stray_pids()) & set(rootfs.processes_rooted_in(rootfs.RABBITMQ_TRIXIE.root))
    # the node writes only to its own folder, never into the shared root
    assert (node.layout.base_dir / "mnesia").is_dir() and any((node.layout.base_dir / "log").glob("*.log"))
    assert not (rootfs.RABBITMQ_TRIXIE.root / "var/lib/rabbitmq/mnesia" / node.layout.nodename).exists()
    written = node.ctl("eval", 'file:write_file("/usr/lib/taskq-probe", <<"x">>).', timeout=90)
    assert written.stdout.strip() == "{error,erofs}"  # the shared root is mounted read-only for the node


def test_4_0_durable_message_survives_stop_and_start(nodes: list[PrivateRabbitMQ], tmp_path: Path) -> None:
    node = _node(nodes, tmp_path / "a", CHROOT_SERIES)
    _publish(node.amqp_url, "kept", [b"one", b"two"])
    node.stop()
    _no_trace_of(node)
    assert not ports.port_accepts(node.layout.node_port)
    assert node.start() > 0
    assert _drain(node.amqp_url, "kept") == [b"one", b"two"]


def test_two_4_0_nodes_run_at_once_from_one_root(nodes: list[PrivateRabbitMQ], tmp_path: Path) -> None:
    first = _node(nodes, tmp_path / "a", CHROOT_SERIES)
    second = _node(nodes, tmp_path / "b", CHROOT_SERIES)
    _publish(first.amqp_url, "q", [b"first"])
    _publish(second.amqp_url, "q", [b"second"])
    assert _drain(first.amqp_url, "q") == [b"first"]
    assert _drain(second.amqp_url, "q") == [b"second"]
    first.close()
    _no_trace_of(first)
    assert second.management_answers()  # stopping one node leaves the other (and its epmd) alone
    assert second.ctl("status", timeout=90).returncode == 0


def test_close_kills_a_4_0_node_whose_pid_was_never_recorded(nodes: list[PrivateRabbitMQ], tmp_path: Path) -> None:
    running = _node(nodes, tmp_path / "a", CHROOT_SERIES)
    assert running.stray_pids()  # the node's processes carry its marker
    forgotten = PrivateRabbitMQ(running.layout)  # a handle that never learnt the pid (killed before saving)
    forgotten.close()
    _no_trace_of(running)
    assert not ports.port_accepts(running.layout.node_port)


def _start_session_and_wait(set_file: Path) -> subprocess.Popen[bytes]:
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from taskq_dev.services import session_services
        owned = session_services()
        broker = owned.ensure_rabbitmq()
        open({str(set_file)!r}, "w").write(json.dumps({{"dir": str(owned.base_dir), "url": broker.amqp_url}}))
        time.sleep(600)
        """
    )
    env = {**os.environ, "TASKQ_TEST_RABBITMQ": CHROOT_SERIES}
    env.pop("AMQP_URL", None)
    return subprocess.Popen([sys.executable, "-c", script], env=env)


def test_a_killed_test_session_leaves_nothing_after_the_next_sweep(tmp_path: Path) -> None:
    set_file = tmp_path / "set.json"
    session = _start_session_and_wait(set_file)
    try:
        ports.wait_until(lambda: set_file.exists() or session.poll() is not None, timeout=240, what="the session's broker")
        assert session.poll() is None, "the session process died before its broker was up"
        recorded: dict[str, Any] = json.loads(set_file.read_text())
    finally:
        session.send_signal(signal.SIGKILL)
        session.wait(timeout=30)
    base_dir = Path(recorded["dir"])
    left = services.ServiceSet.load(base_dir)
    assert isinstance(left, services.ServiceSet) and isinstance(left.rabbitmq, PrivateRabbitMQ)
    assert left.rabbitmq.series == CHROOT_SERIES and left.rabbitmq.stray_pids()  # still running: an orphan
    assert base_dir in services.sweep_orphans()
    assert not base_dir.exists()
    _no_trace_of(left.rabbitmq)


def test_servers_whose_folder_is_gone_are_killed_by_the_sweep(nodes: list[PrivateRabbitMQ], tmp_path: Path) -> None:
    node = _node(nodes, tmp_path / "gone", CHROOT_SERIES)
    pids = node.stray_pids()
    node.process.pid = None  # as if its state file were lost
    os.rename(node.layout.base_dir, tmp_path / "moved")  # its folder no longer exists under that name
    try:
        killed = services.kill_homeless_servers()
        assert set(pids) <= set(killed)
        ports.wait_until(lambda: not node.stray_pids(), timeout=15, what="the homeless node to exit")
    finally:
        os.rename(tmp_path / "moved", node.layout.base_dir)


def test_3_10_choice_still_runs_the_debian_12_node(
    nodes: list[PrivateRabbitMQ], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKQ_TEST_RABBITMQ", "3.10")
    monkeypatch.delenv("AMQP_URL", raising=False)
    owned = services.ServiceSet(base_dir=tmp_path / "set")
    broker = owned.ensure_rabbitmq()
    assert isinstance(broker, PrivateRabbitMQ)
    nodes.append(broker)
    assert broker.series == HOST_SERIES and broker.version_info[:2] == (3, 10)
    assert "consumer_timeout = 86400000" in (broker.layout.base_dir / "rabbitmq.conf").read_text()
    _publish(broker.amqp_url, "kept", [b"x"])
    broker.stop()
    assert broker.stray_pids() == []  # its own epmd too: nothing of a stopped 3.10 node keeps running
    broker.start()
    assert _drain(broker.amqp_url, "kept") == [b"x"]
    loaded = services.ServiceSet.load(tmp_path / "set")
    assert loaded is not None and isinstance(loaded.rabbitmq, PrivateRabbitMQ) and loaded.rabbitmq.series == HOST_SERIES


def test_a_failed_root_build_leaves_no_root_that_looks_done() -> None:
    bogus = rootfs.RootRecipe(name="harness-test-bogus", suite="no-such-suite", packages=("rabbitmq-server",))
    try:
        with pytest.raises(rootfs.RootfsError, match="debootstrap no-such-suite failed"):
            rootfs.ensure_root(bogus)
        assert not rootfs.is_built(bogus) and not bogus.root.exists()
        assert not (bogus.root.parent / "root.partial").exists()
        assert str(bogus.home) not in Path("/proc/mounts").read_text()
    finally:
        shutil.rmtree(bogus.home, ignore_errors=True)


def test_old_builds_are_removed_unless_a_process_runs_in_them() -> None:
    current = rootfs.RABBITMQ_TRIXIE
    old = current.home / f"{current.suite}-000000000000" / "root"
    (old / "etc").mkdir(parents=True)
    try:
        removed = rootfs.sweep_old_roots(current)
        assert old.parent in removed and not old.parent.exists()
        assert rootfs.is_built(current)
    finally:
        shutil.rmtree(old.parent, ignore_errors=True)


def test_a_changed_recipe_builds_elsewhere() -> None:
    current = rootfs.RABBITMQ_TRIXIE
    changed = rootfs.RootRecipe(name=current.name, suite=current.suite, packages=current.packages, revision=current.revision + 1)
    assert changed.root != current.root and changed.root.parent.parent == current.root.parent.parent
    assert not rootfs.is_built(changed)


def test_the_session_broker_is_the_selected_series(rabbitmq: RabbitMQService, rabbitmq_version: tuple[int, ...]) -> None:
    if not isinstance(rabbitmq, PrivateRabbitMQ):
        pytest.skip("AMQP_URL names the broker: its version is whatever it runs")
    assert rabbitmq.series == selected_series()
    assert rabbitmq_version[:2] == tuple(int(part) for part in rabbitmq.series.split("."))
    assert rabbitmq_version == rabbitmq.version_info


_KILL_BUILD = """
import sys
from taskq_dev import rootfs
rootfs.ensure_root(rootfs.RootRecipe(name=sys.argv[1], suite="trixie", packages=()))
"""


def test_a_killed_root_build_leaves_no_process_no_mount_and_no_root_that_looks_done() -> None:
    recipe = rootfs.RootRecipe(name="harness-test-killed-build", suite="trixie", packages=())
    log = recipe.root.parent / "debootstrap.log"
    builder = subprocess.Popen([sys.executable, "-c", _KILL_BUILD, recipe.name], stderr=subprocess.DEVNULL)
    try:
        # debootstrap mounts proc and sys into the target while it installs: kill it right then
        ports.wait_until(
            lambda: log.exists() and "Installing core packages" in log.read_text(errors="replace"),
            timeout=240,
            what="debootstrap's second stage",
            give_up=lambda: None if builder.poll() is None else f"the build exited with {builder.returncode}",
        )
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=30)
        partial = str(recipe.root.parent / "root.partial")

        def debootstrap_gone() -> bool:
            return not any(partial in arg for pid in rootfs.processes_rooted_in(Path("/")) for arg in _argv(pid))

        ports.wait_until(debootstrap_gone, timeout=30, what="the killed build's debootstrap to exit")
        assert str(recipe.home) not in Path("/proc/mounts").read_text()
        assert not rootfs.is_built(recipe) and not recipe.root.exists()
    finally:
        if builder.poll() is None:
            builder.kill()
        shutil.rmtree(recipe.home, ignore_errors=True)


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []
