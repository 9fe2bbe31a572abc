"""The `taskq` command on real servers: output, `--json`, exit codes 0/1/2/3, one-line errors without
tracebacks or passwords. Most cases run the CLI in-process (click's runner, separate stderr) to keep
the suite fast; one test runs the installed console script as a shell user would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskq.cli import app
from taskq.client import Client
from taskq.errors import QueueNotFound
from taskq.settings import Settings

pytestmark = pytest.mark.services

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def environment(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    env.update(TASKQ_AMQP_URL=amqp_url, TASKQ_MONGODB_URI=mongodb_uri, TASKQ_DATABASE=database_name, TASKQ_QUEUE=queue_name)
    yield env
    with Client(Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name)) as client:
        try:
            client.purge(queue_name)
        except QueueNotFound:
            pass


@pytest.fixture
def taskq(environment: dict[str, str]) -> Run:
    runner = CliRunner()

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = runner.invoke(app, list(args), input=stdin, env={**environment, **(env or {})}, catch_exceptions=False)
        return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_console_script_submits_and_reads_status(environment: dict[str, str]) -> None:
    def shell(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["taskq", *args], capture_output=True, text=True, env=environment, timeout=60)

    submitted = shell("submit", "echo", "--args", "[7]")
    assert submitted.returncode == 0, submitted.stderr
    status = shell("status", submitted.stdout.strip(), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["args"] == [7]
    missing = shell("status", "no-such-task")
    assert missing.returncode == 1 and missing.stderr == "taskq: no task with id 'no-such-task'\n"


def test_submit_then_status_and_queue(taskq: Run, queue_name: str) -> None:
    submitted = taskq("submit", "echo", "--args", '[1, 2]', "--kwargs", '{"x": "y"}', "--priority", "3")
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()

    status = taskq("status", task_id, "--json")
    assert status.returncode == 0
    doc = json.loads(status.stdout)
    assert (doc["id"], doc["state"], doc["args"], doc["kwargs"], doc["priority"]) == (task_id, "queued", [1, 2], {"x": "y"}, 3)
    assert task_id in taskq("status", task_id).stdout

    queue = json.loads(taskq("queue", "--json").stdout)
    assert (queue["name"], queue["ready"], queue["counts"]["queued"]) == (queue_name, 1, 1)


def test_count_submits_distinct_tasks_with_a_summary(taskq: Run) -> None:
    result = taskq("submit", "noop", "--count", "300")
    assert result.returncode == 0, result.stderr
    assert "submitted 300 tasks (300 sent, 0 already known)" in result.stdout

    as_json = json.loads(taskq("submit", "noop", "--count", "20", "--json").stdout)
    assert as_json["published"] == 20 and len(set(as_json["ids"])) == 20
    listed = json.loads(taskq("list", "--state", "queued", "--limit", "500", "--json").stdout)
    assert len(listed) == 320


def test_file_is_validated_as_a_whole_before_anything_is_sent(taskq: Run, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"name": "echo", "args": [1]}\n\n{"name": "sleep", "kwargs": {"seconds": 0.1}, "id": "file-2"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "echo"}\n{"name": "echo", "args": "oops"}\n')

    refused = taskq("submit", "--file", str(bad))
    assert refused.returncode == 2 and f"{bad}:2: invalid task" in refused.stderr
    assert taskq("queue").returncode == 1  # nothing was sent: the queue was not even declared

    accepted = taskq("submit", "--file", str(good), "--json")
    assert accepted.returncode == 0 and json.loads(accepted.stdout)["published"] == 2
    again = json.loads(taskq("submit", "--file", str(good), "--json").stdout)
    assert (again["existing"], "file-2" in again["ids"]) == (1, True)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("status", "no-such-task"), 1, "no task with id 'no-such-task'"),
        (("queue", "no-such-queue"), 1, "no queue named 'no-such-queue'"),
        (("submit", "echo", "--args", "[1"), 2, "--args is not JSON"),
        (("submit", "echo", "--args", '{"a": 1}'), 2, "--args must be a JSON array"),
        (("submit", "not a name"), 2, "invalid task: name"),
        (("submit", "echo", "--count", "3", "--id", "x"), 2, "cannot take one --id"),
        (("submit",), 2, "give a task NAME or --file"),
        (("list", "--state", "sleeping"), 2, "sleeping"),
        (("purge",), 2, "pass --yes"),
    ],
)
def test_expected_failures_exit_with_their_code_and_one_line(taskq: Run, args: tuple[str, ...], code: int, message: str) -> None:
    result = taskq(*args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("variable", ["TASKQ_AMQP_URL", "TASKQ_MONGODB_URI"])
def test_unavailable_servers_exit_3_without_the_password(taskq: Run, variable: str) -> None:
    scheme = "amqp" if variable == "TASKQ_AMQP_URL" else "mongodb"
    broken = {variable: f"{scheme}://user:s3cret@127.0.0.1:{_free_port()}/", "TASKQ_QUEUE": "q"}
    command = ("submit", "echo") if scheme == "amqp" else ("status", "some-id")
    result = taskq(*command, env=broken)
    assert result.returncode == 3
    assert "unreachable" in result.stderr or "unavailable" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_purge_with_yes_and_the_dead_letter_commands(taskq: Run, queue_name: str) -> None:
    taskq("submit", "noop", "--count", "5")
    assert json.loads(taskq("dead", "--json").stdout) == []
    requeued = taskq("requeue-dead", "--json")
    assert requeued.returncode == 0 and json.loads(requeued.stdout) == {"requeued": [], "left": 0}

    purged = taskq("purge", "--yes", "--json")
    assert purged.returncode == 0
    assert json.loads(purged.stdout) == {"messages": {queue_name: 5, f"{queue_name}.dead": 0}, "documents": 5}
