"""The chaos report's judgement, on made-up observations (no servers): attribution, lost, stuck, regressions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskq_dev.chaos import ChaosPlan, Execution, build_report, observe, read_ledger

T0 = 1_000.0


def _spec(task_id: str, retried: bool = False) -> dict[str, Any]:
    return {"id": task_id, "name": "chaos_step", "kwargs": {"ledger": "-", "seconds": 0.1, "fail_first": retried}}


def _run(task_id: str, attempt: int, worker: str, start: float, outcome: str = "end", pid: int = 1) -> Execution:
    return Execution(task_id, attempt, worker, pid, T0 + start, outcome, None if outcome == "none" else T0 + start + 0.1)


def _report(
    specs: list[dict[str, Any]],
    latest: dict[str, tuple[str, int]],
    executions: dict[str, list[Execution]],
    timeline: list[dict[str, Any]] | None = None,
    *,
    messages_left: int = 0,
    republished: dict[str, str] | None = None,
    regressions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return build_report(
        plan=ChaosPlan(tasks=len(specs)),
        specs=specs,
        latest=latest,
        regressions=regressions or [],
        executions=executions,
        timeline=timeline or [],
        queue_messages={"q": messages_left},
        errors=[],
        wall_s=1.0,
        samples=1,
        failed_samples=0,
        producer_runs=[],
        t0=T0,
        first_final={task_id: 50.0 for task_id, (state, _) in latest.items() if state == "succeeded"},
        republished=republished or {},
    )


def test_a_rerun_after_a_kill_is_attributed_to_the_kill_and_a_planned_retry_is_no_duplicate() -> None:
    specs = [_spec("a"), _spec("b", retried=True)]
    executions = {
        "a": [_run("a", 1, "w0g1", 10.0, "none"), _run("a", 1, "w1g1", 13.0)],
        "b": [_run("b", 1, "w1g1", 11.0, "fail"), _run("b", 2, "w1g1", 12.0)],
    }
    timeline = [{"at_s": 12.0, "fault": "worker_sigkill", "target": "w0g1"}]
    report = _report(specs, {"a": ("succeeded", 1), "b": ("succeeded", 2)}, executions, timeline)
    assert report["duplicates"]["count"] == 1
    assert report["duplicates"]["items"][0]["reruns"][0]["cause"] == "worker_sigkill w0g1 at 12.0s"
    assert report["executions"] == {"2": 2}
    assert report["lost"] == report["stuck"] == report["regressions"] == 0


def test_a_rerun_without_a_fault_fails_the_run_and_a_republished_copy_explains_one() -> None:
    specs = [_spec("a"), _spec("b")]
    executions = {
        "a": [_run("a", 1, "w0g1", 10.0), _run("a", 1, "w1g1", 20.0)],
        "b": [_run("b", 1, "w0g1", 10.0), _run("b", 1, "w1g1", 20.0)],
    }
    latest = {"a": ("succeeded", 1), "b": ("succeeded", 1)}
    report = _report(specs, latest, executions, republished={"b": "producer_rerun at 5.0s"})
    causes = {item["task"]: item["reruns"][0]["cause"] for item in report["duplicates"]["items"]}
    assert causes["a"] == "unexplained"
    assert causes["b"].startswith("producer_rerun: a second copy")
    assert report["duplicates"]["unexplained"] == 1
    assert not report["checks"]["every_duplicate_explained"] and not report["pass"]
    # both reruns started at 20 s, before the tasks were seen final (50 s)
    assert report["executions_after_final"]["count"] == 0


def test_a_kill_after_the_task_was_final_explains_no_rerun() -> None:
    specs = [_spec("a")]
    executions = {"a": [_run("a", 1, "w0g1", 45.0), _run("a", 1, "w1g1", 60.0)]}
    timeline = [{"at_s": 55.0, "fault": "worker_sigkill", "target": "w0g1"}]
    report = _report(specs, {"a": ("succeeded", 1)}, executions, timeline)
    assert report["duplicates"]["items"][0]["reruns"][0]["cause"] == "unexplained"
    assert report["executions_after_final"]["count"] == 1


def test_not_final_is_stuck_while_messages_remain_and_lost_when_none_do() -> None:
    specs = [_spec("a"), _spec("b")]
    latest = {"a": ("running", 1), "b": ("succeeded", 1)}
    executions = {"b": [_run("b", 1, "w0g1", 1.0)]}
    stuck = _report(specs, latest, executions, messages_left=3)
    assert (stuck["stuck"], stuck["lost"], stuck["pass"]) == (1, 0, False)
    lost = _report(specs, latest, executions, messages_left=0)
    assert (lost["stuck"], lost["lost"], lost["lost_ids"]) == (0, 1, ["a"])
    missing = _report([*specs, _spec("c")], latest, executions, messages_left=3)
    assert missing["lost_ids"] == ["c"]  # no document at all: nothing can ever move it
    assert missing["phantom_successes"] == []


def test_observe_records_a_final_state_that_changes_attempts_that_decrease_and_a_vanished_document() -> None:
    latest: dict[str, tuple[str, int]] = {}
    first_final: dict[str, float] = {}
    assert (
        observe(
            latest,
            first_final,
            [{"_id": "a", "state": "succeeded", "attempts": 2}, {"_id": "b", "state": "running", "attempts": 1}],
            1.0,
        )
        == []
    )
    found = observe(latest, first_final, [{"_id": "a", "state": "running", "attempts": 1}], 2.0)
    assert {(r["task"], r["why"]) for r in found} == {
        ("a", "final state changed"),
        ("a", "attempts decreased"),
        ("b", "document vanished"),
    }
    assert first_final == {"a": 1.0}


def test_read_ledger_pairs_each_start_with_its_own_process_end(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.write_text(
        "start a 1 w0g1 10 100.0\n"
        "start a 1 w1g1 20 101.0\n"
        "end a 1 w1g1 20 101.5\n"
        "start b 1 w0g1 10 102.0\n"
        "fail b 1 w0g1 10 102.1\n"
        "torn line\n"
    )
    runs = read_ledger(ledger)
    assert [(e.worker_id, e.outcome) for e in runs["a"]] == [("w0g1", "none"), ("w1g1", "end")]
    assert [(e.attempt, e.outcome, e.ended) for e in runs["b"]] == [(1, "fail", 102.1)]


def test_a_rerun_after_its_pods_node_was_lost_is_attributed_to_the_node_loss_not_to_other_pods() -> None:
    """Cluster mode (taskq_dev.chaos_cluster): a node loss names each pod it took; only their tasks are explained by it."""
    pod, other = "chaos-worker-abc-x1", "chaos-worker-abc-y2"
    specs = [_spec("a"), _spec("b")]
    executions = {
        "a": [_run("a", 1, pod, 30.0, "none"), _run("a", 1, other, 40.0)],
        "b": [_run("b", 1, other, 31.0, "none"), _run("b", 1, pod, 45.0)],
    }
    timeline = [
        {"at_s": 32.0, "fault": "node_lost", "node": "kwok-node-1", "pods": [pod], "until_s": 55.0},
        {"at_s": 32.0, "fault": "worker_node_lost", "target": pod, "node": "kwok-node-1"},
    ]
    report = _report(specs, {"a": ("succeeded", 1), "b": ("succeeded", 1)}, executions, timeline)
    causes = {d["task"]: d["reruns"][0]["cause"] for d in report["duplicates"]["items"]}
    assert causes == {"a": f"worker_node_lost {pod} at 32.0s", "b": "unexplained"}
    assert report["duplicates"]["by_cause"] == {"worker_node_lost": 1, "unexplained": 1}
