"""The dashboard's pure parsing: the tasks page's time filters, management API rows, TaskQueues by queue."""

from __future__ import annotations

from datetime import UTC, datetime

from taskq.broker.management import QueueRates, parse_rates, vhost_of
from taskq.http.dashboard.data import TaskFilter
from taskq.http.dashboard.replicas import Replicas, by_queue


def test_time_filters_read_datetime_local_and_iso_as_utc() -> None:
    wanted = TaskFilter.parse({"since": "2026-12-02T03:50", "until": "2026-12-02T05:50:15+01:00"})
    assert wanted.since == datetime(2026, 12, 2, 3, 50, tzinfo=UTC)
    assert wanted.until == datetime(2026, 12, 2, 4, 50, 15, tzinfo=UTC)
    assert wanted.problems == []
    assert wanted.query() == {"since": "2026-12-02T03:50:00", "until": "2026-12-02T04:50:15"}
    assert TaskFilter.parse({"since": "2026-12-02 03:50:15Z"}).since == datetime(2026, 12, 2, 3, 50, 15, tzinfo=UTC)


def test_a_bad_time_is_ignored_and_named() -> None:
    wanted = TaskFilter.parse({"since": "yesterday", "until": ""})
    assert wanted.since is None and wanted.until is None
    assert len(wanted.problems) == 1 and wanted.problems[0].startswith("since:")
    assert TaskFilter.parse({"since": "2026-12-02T03:50"}).key() != TaskFilter.parse({}).key()


def test_management_rows_give_rates_by_queue() -> None:
    rows = [
        {"name": "a", "message_stats": {"publish_details": {"rate": 12.5}, "deliver_get_details": {"rate": 3}}},
        {"name": "b"},  # no traffic yet: no message_stats
        {"name": 7},
        "junk",
    ]
    assert parse_rates(rows) == {"a": QueueRates(12.5, 3.0), "b": QueueRates(0.0, 0.0)}
    assert vhost_of("amqp://u:p@h:5672/") == "/" and vhost_of("amqp://h/team%2Fa") == "team/a"


def test_taskqueues_map_to_queues_by_spec_queue_or_name() -> None:
    items = [
        {
            "metadata": {"name": "tq", "namespace": "a"},
            "spec": {"queue": "emails"},
            "status": {"desiredReplicas": 3, "readyReplicas": 2},
        },
        {"metadata": {"name": "tq", "namespace": "b"}, "spec": {"queue": "emails"}, "status": {"desiredReplicas": 1}},
        {"metadata": {"name": "reports", "namespace": "a"}, "spec": {}},
    ]
    assert by_queue(items) == {
        "emails": Replicas(desired=4, ready=2, taskqueues=("a/tq", "b/tq")),
        "reports": Replicas(desired=None, ready=None, taskqueues=("a/reports",)),
    }
