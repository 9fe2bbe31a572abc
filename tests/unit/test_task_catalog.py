"""The dashboard's task catalog (taskq.core.catalog): order, one-filter slices with totals, combined filters, time
ranges, id prefixes, pages, and the examine budget that makes a combined filter answer "partial" instead of walking on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taskq.core.catalog import Catalog

T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def _catalog(n: int = 100) -> Catalog:
    states = ["succeeded", "failed", "dead", "queued"]
    return Catalog((f"t-{i:04d}", states[i % 4], f"q{i % 2}", f"job{i % 5}", T0 + timedelta(seconds=i)) for i in range(n))


def test_order_is_most_recent_first_and_counts_per_queue() -> None:
    catalog = _catalog()
    assert catalog.ids[:3] == ["t-0099", "t-0098", "t-0097"]
    assert catalog.counts["q0"] == {"succeeded": 25, "dead": 25}
    assert catalog.queue_names() == ["q0", "q1"]
    page = catalog.page(limit=10)
    assert page.ids[0] == "t-0099" and page.has_next and page.total == 100


def test_one_filter_is_an_exact_slice_with_its_total_and_pages() -> None:
    catalog = _catalog()
    first = catalog.page(state="failed", limit=10)
    assert first.total == 25 and first.ids[0] == "t-0097" and len(first.ids) == 10 and first.has_next
    last = catalog.page(state="failed", offset=20, limit=10)
    assert last.ids == ["t-0017", "t-0013", "t-0009", "t-0005", "t-0001"] and not last.has_next
    assert catalog.page(name="nope").ids == [] and catalog.page(name="nope").total == 0


def test_combined_filters_time_range_and_prefix() -> None:
    catalog = _catalog()
    both = catalog.page(state="failed", name="job0", limit=50)
    assert both.ids == [f"t-{i:04d}" for i in range(99, -1, -1) if i % 4 == 1 and i % 5 == 0]
    window = catalog.page(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=20), limit=50)
    assert window.ids == [f"t-{i:04d}" for i in range(19, 9, -1)] and window.total == 10
    prefixed = catalog.page(id_prefix="t-005", limit=50)
    assert prefixed.ids == [f"t-{i:04d}" for i in range(59, 49, -1)]
    mixed = catalog.page(id_prefix="t-005", queue="q1", since=T0 + timedelta(seconds=55), limit=50)
    assert mixed.ids == ["t-0059", "t-0057", "t-0055"]


def test_a_document_seen_twice_in_one_scan_counts_once() -> None:
    catalog = Catalog([("a", "queued", "q", "n", T0), ("a", "running", "q", "n", T0 + timedelta(seconds=1))])
    assert len(catalog) == 1 and catalog.counts == {"q": {"running": 1}}


def test_combined_filter_stops_at_the_budget_and_says_partial() -> None:
    catalog = _catalog(1000)
    page = catalog.page(state="failed", name="job1", budget=100)
    assert page.partial and page.total is None and len(page.ids) == 25  # 1 in 4 of the 100 examined
    assert not catalog.page(state="failed", name="job1").partial
