"""The demo summary's drain against the ideal: task-seconds, pod start and the ratio (taskq_dev.demo_report)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskq_dev.demo_report import Sample, drain_efficiency, pod_start_seconds, summarize, task_seconds

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def doc(worker: str, start_s: float, run_s: float, state: str = "succeeded") -> dict[str, object]:
    began = T0 + timedelta(seconds=start_s)
    return {
        "state": state,
        "worker": worker,
        "created_at": T0,
        "timestamps": {"queued": T0, "running": began, state: began + timedelta(seconds=run_s)},
    }


def test_ideal_spreads_task_seconds_over_every_slot_after_one_pod_start() -> None:
    e = drain_efficiency(task_seconds=400.0, max_replicas=10, concurrency=4, pod_start_s=3.0, drain_s=16.25)
    assert e.slots == 40
    assert e.ideal_s == pytest.approx(13.0)
    assert e.ratio == pytest.approx(1.25)
    assert e.met
    assert not drain_efficiency(400.0, 10, 4, 3.0, 16.3).met


def test_task_seconds_counts_running_to_final_and_skips_tasks_that_never_ran() -> None:
    never_ran = {"state": "dead", "created_at": T0, "timestamps": {"queued": T0, "dead": T0}}
    assert task_seconds([doc("a", 1, 0.5), doc("b", 2, 2.0, "failed"), never_ran]) == pytest.approx(2.5)


def test_pod_start_is_the_median_from_creation_to_a_pods_first_task() -> None:
    created = {"w-1": T0, "w-2": T0 + timedelta(seconds=1), "w-3": T0 + timedelta(seconds=2)}
    documents = [doc("w-1", 5, 1), doc("w-1", 3, 1), doc("w-2", 5, 1), doc("w-3", 9, 1), doc("gone", 0, 1)]
    # first tasks: w-1 at 3 s (created 0), w-2 at 5 s (created 1), w-3 at 9 s (created 2) -> 3, 4, 7
    assert pod_start_seconds(documents, created) == pytest.approx(4.0)
    assert pod_start_seconds(documents, {}) is None


def test_summary_carries_the_efficiency_only_when_slots_and_pods_are_known() -> None:
    documents = [doc("w-1", 2 + i * 0.1, 1.0) for i in range(8)]
    samples = [Sample(t=0.5, ready=8, unacked=0, desired=1, replicas=0, ready_replicas=0, final=0)]
    summary = summarize(documents, samples, T0, max_replicas=2, concurrency=2, pods_created={"w-1": T0 + timedelta(seconds=1)})
    assert summary.efficiency is not None
    assert summary.efficiency.ideal_s == pytest.approx(8.0 / 4 + 1.0)
    assert summary.efficiency.ratio == pytest.approx(summary.drain_s / 3.0)
    assert summarize(documents, samples, T0).efficiency is None
