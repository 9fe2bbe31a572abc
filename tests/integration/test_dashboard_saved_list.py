"""The dashboard's task list against the real test store: a scan's summaries saved in chunks by `_id` read back
exactly (ids, states, queues, names, update times to the millisecond), a second save replaces the first and removes
its chunks, nothing saved reads as None; a page's rows are read now, and a listed task that is gone or no longer
matches the filters is left out and counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taskq.core.catalog import Catalog, Summary
from taskq.core.message import utcnow
from taskq.http.dashboard import data
from taskq.http.dashboard.catalog import CatalogView
from taskq.store import dashboard_reads
from taskq.store.mongo import TaskStore

AT = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def test_saved_summaries_read_back_and_a_new_save_replaces_the_old(store: TaskStore) -> None:
    assert dashboard_reads.load_summaries(store) is None
    first: list[Summary] = [
        (f"t-{i:05d}", "failed" if i % 2 else "dead", f"q{i % 3}", f"j{i % 4}", AT + timedelta(milliseconds=i) if i % 7 else None)
        for i in range(dashboard_reads.SAVED_CHUNK * 2 + 17)
    ]
    assert dashboard_reads.save_summaries(store, first, AT, 1.5) == 3
    loaded = dashboard_reads.load_summaries(store)
    assert loaded is not None
    summaries, taken_at, took_s = loaded
    assert taken_at == AT and took_s == 1.5 and len(summaries) == len(first)
    for got, want in zip(summaries, first, strict=True):
        assert got[:4] == want[:4]
        assert (got[4] is None) == (want[4] is None)
        if want[4] is not None and got[4] is not None:
            assert abs((got[4] - want[4]).total_seconds()) < 0.001
    second: list[Summary] = [("only", "queued", "q", "n", AT)]
    assert dashboard_reads.save_summaries(store, second, AT + timedelta(seconds=5), 0.1) == 1
    again = dashboard_reads.load_summaries(store)
    assert again is not None and again[0] == second and again[1] == AT + timedelta(seconds=5)
    assert store.tasks.database[dashboard_reads.SAVED].count_documents({}) == 2  # the head and one chunk


def test_a_listed_task_that_moved_on_is_left_out_and_counted(store: TaskStore) -> None:
    """The catalog lists two failed tasks; one was retried since (queued now): the page shows the other and says so."""
    now = utcnow()
    store.tasks.insert_many(
        [
            {"_id": "still-failed", "name": "job", "queue": "q", "state": "failed", "updated_at": now},
            {"_id": "retried", "name": "job", "queue": "q", "state": "queued", "updated_at": now},
        ]
    )
    listed: list[Summary] = [(task_id, "failed", "q", "job", now) for task_id in ("still-failed", "retried", "gone")]
    catalog = Catalog(listed)
    view = CatalogView(catalog, now, 0.1, None, 3, None)
    page = data.task_page(store, view, data.TaskFilter.parse({"state": "failed"}))
    assert [row["id"] for row in page.rows] == ["still-failed"] and page.left_out == 2 and page.total == 3
    everything = data.task_page(store, view, data.TaskFilter.parse({}))
    assert sorted(row["id"] for row in everything.rows) == ["retried", "still-failed"] and everything.left_out == 1
