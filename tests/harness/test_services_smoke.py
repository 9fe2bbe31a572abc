"""The service harness without servers: URL derivation, bounded waits, process handles, state files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskq_dev import ports
from taskq_dev.mongo import ExternalMongo, PrivateMongo, StoreLayout
from taskq_dev.processes import BackgroundProcess, process_start_ticks
from taskq_dev.rabbitmq import (
    ExternalRabbitMQ,
    PrivateRabbitMQ,
    RabbitNodeLayout,
    _config_text,
    management_url_for,
    split_credentials,
    vhost_of,
)
from taskq_dev.service_base import ServiceError
from taskq_dev.services import ServiceSet, rabbitmq_from_environment


def test_management_url_keeps_host_and_credentials_of_the_amqp_url() -> None:
    assert management_url_for("amqp://user:p%40ss@broker:5672/%2F") == "http://user:p%40ss@broker:15672"
    assert management_url_for("amqp://127.0.0.1:5999/") == "http://guest:guest@127.0.0.1:15672"
    assert split_credentials("http://user:p%40ss@broker:15672/") == ("http://broker:15672", ("user", "p@ss"))


def test_vhost_of_url() -> None:
    assert vhost_of("amqp://g:g@h:1/%2F") == "/"
    assert vhost_of("amqp://g:g@h:1") == "/"
    assert vhost_of("amqp://g:g@h:1/tenant%2Fa") == "tenant/a"


def test_environment_override_derives_the_management_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://u:secret@10.1.2.3:5673/%2F")
    monkeypatch.delenv("RABBITMQ_MANAGEMENT_URL", raising=False)
    broker = rabbitmq_from_environment()
    assert isinstance(broker, ExternalRabbitMQ)
    assert (broker.management_base, broker.management_auth) == ("http://10.1.2.3:15672", ("u", "secret"))
    monkeypatch.setenv("RABBITMQ_MANAGEMENT_URL", "http://a:b@elsewhere:1234")
    broker = rabbitmq_from_environment()
    assert broker is not None and broker.management_base == "http://elsewhere:1234"


def test_external_services_refuse_restarts_without_leaking_passwords() -> None:
    for service in (ExternalRabbitMQ("amqp://u:hunter2@h:1/%2F"), ExternalMongo("mongodb://u:hunter2@h:1/")):
        with pytest.raises(ServiceError) as stopped:
            service.stop()
        assert "hunter2" not in str(stopped.value) and "***" in str(stopped.value)
        service.close()  # never touches an external server


def test_private_node_config_has_the_settings_tests_rely_on(tmp_path: Path) -> None:
    layout = RabbitNodeLayout(base_dir=tmp_path, node_port=40001, dist_port=25001, management_port=40002)
    text = _config_text(layout)
    for line in (
        "listeners.tcp.1 = 127.0.0.1:40001",
        "management.tcp.port = 40002",
        "collect_statistics_interval = 1000",
        "loopback_users = none",
    ):
        assert line in text
    assert layout.nodename == "taskq-40001@localhost"
    assert RabbitNodeLayout.from_record(layout.to_record()) == layout


def test_ferretdb_command_line_disables_debug_listener_and_telemetry(tmp_path: Path) -> None:
    argv = StoreLayout(kind="ferretdb", binary=Path("/x/ferretdb"), base_dir=tmp_path, port=40003).argv()
    assert "--debug-addr=-" in argv and "--telemetry=disable" in argv and "--handler=sqlite" in argv
    assert "--listen-addr=127.0.0.1:40003" in argv


def test_free_port_can_be_bound_and_a_listening_port_is_not_free() -> None:
    port = ports.free_port(20000, 30000)
    assert 20000 <= port < 30000 and ports.port_is_free(port)
    import socket

    with socket.socket() as listener:
        listener.bind((ports.LOOPBACK, 0))
        listener.listen()
        taken = listener.getsockname()[1]
        assert not ports.port_is_free(taken)
        assert ports.port_accepts(taken)


def test_wait_until_is_bounded_and_can_give_up_early() -> None:
    started = time.monotonic()
    with pytest.raises(ports.WaitTimeout, match="timed out"):
        ports.wait_until(lambda: False, timeout=0.3, what="nothing", interval=0.05)
    assert time.monotonic() - started < 2.0
    with pytest.raises(ports.WaitTimeout, match="it crashed"):
        ports.wait_until(lambda: False, timeout=30, what="x", give_up=lambda: "it crashed")
    calls = iter([False, False, True])
    assert ports.wait_until(lambda: next(calls), timeout=5, what="third try", interval=0.01) < 1.0


def test_background_process_outlives_handle_and_is_found_again(tmp_path: Path) -> None:
    sleeper = BackgroundProcess(argv=[sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "log")
    sleeper.start()
    try:
        assert sleeper.alive() and os.getsid(sleeper.pid or 0) != os.getsid(0)  # its own session
        adopted = BackgroundProcess(argv=[], log_path=tmp_path / "log")
        adopted.adopt(sleeper.record())
        assert adopted.alive()
        recycled = BackgroundProcess(argv=[], log_path=tmp_path / "log")
        recycled.adopt({"pid": sleeper.pid, "start_ticks": (sleeper.start_ticks or 0) + 1})
        assert not recycled.alive()  # a different start time: not ours, never signalled
        adopted.terminate(timeout=5)
        assert sleeper.wait_exit(5) and not sleeper.alive()
    finally:
        sleeper.terminate(timeout=5)


def test_state_file_round_trip_and_orphan_detection(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    owned = ServiceSet(base_dir=tmp_path / "set", owner={"pid": child.pid, "start_ticks": 1})
    owned.rabbitmq = PrivateRabbitMQ(RabbitNodeLayout(tmp_path / "set" / "r", 40011, 25011, 40012))
    owned.mongo = PrivateMongo(StoreLayout("ferretdb", Path("/x/ferretdb"), tmp_path / "set" / "m", 40013))
    owned.save()
    loaded = ServiceSet.load(tmp_path / "set")
    assert loaded is not None and loaded.orphaned()
    assert isinstance(loaded.rabbitmq, PrivateRabbitMQ) and loaded.rabbitmq.amqp_url == owned.rabbitmq.amqp_url
    assert isinstance(loaded.mongo, PrivateMongo) and loaded.mongo.uri == "mongodb://127.0.0.1:40013/"
    assert "TASKQ_AMQP_URL='amqp://guest:guest@127.0.0.1:40011/%2F'" in loaded.exports()
    me = ServiceSet(base_dir=tmp_path / "mine", owner={"pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid())})
    assert not me.orphaned() and not ServiceSet(base_dir=tmp_path / "cli").orphaned()
    loaded.close()  # nothing runs: closing only deletes the folder
    assert not (tmp_path / "set").exists()


def test_sweep_stops_what_a_dead_session_left_and_spares_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKQ_CACHE_DIR", str(tmp_path))
    from taskq_dev.services import session_services, sweep_orphans

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait(timeout=10)
    dead = ServiceSet(
        base_dir=tmp_path / "state" / "services" / "session-dead",
        owner={"pid": finished.pid, "start_ticks": 1},
    )
    dead.mongo = PrivateMongo(StoreLayout("ferretdb", Path(sys.executable), dead.base_dir / "store", 40021))
    dead.mongo.process = BackgroundProcess(
        argv=[sys.executable, "-c", "import time; time.sleep(60)"], log_path=dead.base_dir / "log"
    )
    leftover = dead.mongo.process
    leftover.start()
    dead.save()
    live = session_services()  # sweeps first, then makes this process's own set
    try:
        assert not dead.base_dir.exists() and leftover.wait_exit(5)
        assert live.base_dir.exists() and sweep_orphans() == []
    finally:
        leftover.terminate(timeout=5)
        live.close()
