"""The taskq image for real: built with the harness tooling, run as a worker against the test broker
and store (host network, loopback only), then stopped with SIGTERM in the middle of a task.

Marker `docker`: starts dockerd and builds the image when needed (cached; a warm rebuild takes
seconds). Prints the image size, which the closing note of the packaging issue records.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskq import Client
from taskq.settings import Settings
from taskq_dev import docker
from taskq_dev.ports import poll

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.slow]

WAIT_S = 60.0
POLL_S = 0.2


@pytest.fixture(scope="session")
def taskq_image() -> str:
    tag = docker.build_image()
    print(f"\ntaskq image {tag}: {docker.image_size_bytes(tag) / 1e6:.0f} MB")
    return tag


@pytest.fixture()
def client(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str) -> Iterator[Client]:
    with Client(Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)) as made:
        yield made


@pytest.fixture()
def run_worker(
    taskq_image: str, amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str
) -> Iterator[Callable[..., str]]:
    """`run_worker(**env)` starts a detached worker container and returns its name; all are removed after."""
    started: list[str] = []

    def _run(**extra_env: str) -> str:
        name = f"taskq-test-worker-{uuid.uuid4().hex[:8]}"
        env = {
            "TASKQ_AMQP_URL": amqp_url,
            "TASKQ_MONGODB_URI": mongodb_uri,
            "TASKQ_DATABASE": database_name,
            "TASKQ_QUEUE": queue_name,
            "TASKQ_TASK_MODULES": "taskq.examples",
            "TASKQ_HEALTH_PORT": "0",
            "TASKQ_WORKER_ID": name,
            **extra_env,
        }
        command = [docker.docker_binary(), "run", "--detach", "--name", name, "--network", "host"]
        for key, value in env.items():
            command += ["--env", f"{key}={value}"]
        subprocess.run([*command, taskq_image], check=True, capture_output=True, text=True, timeout=60)
        started.append(name)
        return name

    yield _run
    for name in started:
        subprocess.run([docker.docker_binary(), "rm", "--force", name], capture_output=True, timeout=60)


def _states(client: Client, ids: list[str]) -> list[str]:
    return [client.status(task_id)["state"] for task_id in ids]


def _container_state(name: str) -> dict[str, Any]:
    out = subprocess.run(
        [docker.docker_binary(), "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.split()
    return {"running": out[0] == "true", "exit_code": int(out[1])}


def _logs(name: str) -> str:
    result = subprocess.run([docker.docker_binary(), "logs", name], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def test_image_runs_non_root_without_build_tools(taskq_image: str) -> None:
    probe = (
        "import os, shutil; print(os.getuid()); "
        "print(','.join(t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t))); "
        "print(','.join(t for t in ('taskq-worker', 'taskq-operator', 'taskq-api', 'taskq-dev') if shutil.which(t))); "
        "import importlib.util as u; print(','.join(m for m in ('taskq_dev', 'pytest', 'taskq', 'taskq_operator') if u.find_spec(m)))"
    )
    result = subprocess.run(
        [docker.docker_binary(), "run", "--rm", "--entrypoint", "python3", taskq_image, "-c", probe],
        check=True, capture_output=True, text=True, timeout=60,
    )
    uid, build_tools, entry_points, packages = result.stdout.splitlines()
    assert uid == "10001"
    assert build_tools == ""
    assert entry_points == "taskq-worker,taskq-operator,taskq-api"
    assert packages == "taskq,taskq_operator", "no developer harness or test tools in the image"


def test_worker_container_runs_tasks_and_drains_on_sigterm(
    client: Client, run_worker: Callable[..., str]
) -> None:
    worker = run_worker(TASKQ_CONCURRENCY="1", TASKQ_PREFETCH="4", TASKQ_GRACE_SECONDS="20")

    quick = [client.submit("echo", [index]) for index in range(20)]
    poll(
        lambda: set(_states(client, quick)) == {"succeeded"},
        timeout=WAIT_S,
        what="20 echo tasks to succeed in the container",
        interval=POLL_S,
    )
    assert client.status(quick[0])["result"] is not None

    # One long task starts; the ones behind it are prefetched or still queued when SIGTERM arrives.
    long_task = client.submit("sleep", kwargs={"seconds": 4})
    behind = [client.submit("sleep", kwargs={"seconds": 0.1}) for _ in range(3)]
    poll(lambda: client.status(long_task)["state"] == "running", timeout=WAIT_S, what="the long task to start", interval=POLL_S)
    stop_started = time.monotonic()
    subprocess.run([docker.docker_binary(), "stop", "--time", "30", worker], check=True, capture_output=True, timeout=60)
    stop_seconds = time.monotonic() - stop_started
    print(f"\ndocker stop (SIGTERM) mid-task: container exited after {stop_seconds:.1f} s")

    state = _container_state(worker)
    assert state == {"running": False, "exit_code": 0}, _logs(worker)[-3000:]
    assert stop_seconds < 25, f"the drain took {stop_seconds:.1f} s: SIGTERM was not handled (docker killed it)"
    assert client.status(long_task)["state"] == "succeeded", "the running task finishes during the drain"
    assert "worker.draining" in _logs(worker)
    assert set(_states(client, behind)) == {"queued"}, "tasks not started are handed back, not run or lost"

    # What the first worker handed back is delivered to the next one (at-least-once, nothing lost).
    run_worker(TASKQ_CONCURRENCY="2")
    poll(
        lambda: set(_states(client, behind)) == {"succeeded"},
        timeout=WAIT_S,
        what="the handed-back tasks to succeed",
        interval=POLL_S,
    )
