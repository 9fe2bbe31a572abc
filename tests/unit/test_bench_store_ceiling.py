"""`bench/ceiling.py`'s `commands_per_task`: the traced store commands of a worker run, per task.

The store ceiling of `make bench-worker` replays what this list says a task costs, with as many
writers as it finds: a heartbeat or an index build counted as a task's write, or a reader thread
counted as a writer, would change the ceiling the worker is held to."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from ceiling import ceiling_configurations, commands_per_task  # noqa: E402  (bench/ is not a package)

FIELDS = ("command", "collection", "shape", "thread", "commands", "statements")
ROWS = [
    dict(zip(FIELDS, row, strict=True))
    for row in (
        ("insert", "claims", "", "taskq-committer", 50, 100),
        ("update", "tasks", "upsert", "taskq-committer", 50, 100),
        ("find", "tasks", "by _id", "taskq-committer", 5, 5),
        ("find", "tasks", "by _id", "MainThread", 1, 1),
        ("update", "workers", "upsert", "taskq-heartbeat", 7, 7),
        ("buildInfo", "", "", "taskq-committer", 1, 1),
    )
]


def test_commands_per_task_lists_a_tasks_writes_and_counts_only_writing_threads() -> None:
    mix = commands_per_task(ROWS, tasks=100)

    assert list(mix["per_task"]) == ["insert claims", "update tasks upsert", "find tasks by _id"]
    claims = mix["per_task"]["insert claims"]
    assert (claims["commands_per_task"], claims["statements_per_task"], claims["statements_per_command"]) == (0.5, 1.0, 2.0)
    assert mix["per_task"]["find tasks by _id"]["threads"] == ["MainThread", "taskq-committer"]
    assert mix["round_trips_per_task"] == 1.06
    assert (mix["writers"], mix["writer_threads"]) == (1, ["taskq-committer"])
    assert mix["not_per_task"] == {"update workers taskq-heartbeat": 7, "buildInfo - taskq-committer": 1}


def test_ceiling_configurations_start_at_the_workers_batching_and_keep_bulks_under_ferretdbs_limit() -> None:
    mix = commands_per_task(ROWS, tasks=100)
    assert ceiling_configurations(mix, 4) == [(2, 4), (256, 4), (256, 64)]
    four_writers = {**mix, "writers": 4}
    assert ceiling_configurations(four_writers, 4) == [(2, 4), (256, 4), (256, 24)]
