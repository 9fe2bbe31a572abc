"""An in-memory index of every task's list fields (id, state, queue, name, update time), built from one scan.

The dashboard (`taskq.http.dashboard.catalog`) builds one from a background scan of the tasks
collection and answers its tasks pages and counts from it, so that a page load does work bounded
by the page, not by the collection: FerretDB 1.x serves no filter but `{_id: <string>}` without a
scan. Entries are kept most recently updated first (ties by id, descending); each state, queue and
name has the ascending list of its entries' positions, so a one-filter page is a slice and a time
range is a bisection. Pure: no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

# (id, state, queue, name, updated_at) as the scan reads them.
Summary = tuple[str, str, str, str, datetime | None]
EXAMINE_BUDGET = 50_000
"""Entries a page with two or more filters may examine before it answers with what it found (partial)."""


@dataclass(frozen=True)
class CatalogPage:
    """Ids of one page (in list order), whether more follow, how many match (None when not counted), partial."""

    ids: list[str]
    has_next: bool
    total: int | None
    partial: bool


def _stamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else float("-inf")


class Catalog:
    """The index over one scan's summaries; immutable once built."""

    def __init__(self, summaries: Iterable[Summary]) -> None:
        latest: dict[str, Summary] = {}
        for summary in summaries:
            latest[summary[0]] = summary  # a document seen twice during one scan: the later read wins
        ordered = sorted(latest.values(), key=lambda s: (_stamp(s[4]), s[0]), reverse=True)
        self.ids = [s[0] for s in ordered]
        self._neg_stamps = [-_stamp(s[4]) for s in ordered]  # ascending
        self._fields: dict[str, dict[str, list[int]]] = {"state": {}, "queue": {}, "name": {}}
        self.counts: dict[str, dict[str, int]] = {}
        for position, (_, state, queue, name, _at) in enumerate(ordered):
            self._fields["state"].setdefault(state, []).append(position)
            self._fields["queue"].setdefault(queue, []).append(position)
            self._fields["name"].setdefault(name, []).append(position)
            per_queue = self.counts.setdefault(queue, {})
            per_queue[state] = per_queue.get(state, 0) + 1
        self._values = {
            "state": [s[1] for s in ordered],
            "queue": [s[2] for s in ordered],
            "name": [s[3] for s in ordered],
        }
        by_id = sorted(range(len(ordered)), key=lambda p: self.ids[p])
        self._sorted_ids = [self.ids[p] for p in by_id]
        self._sorted_positions = by_id

    def __len__(self) -> int:
        return len(self.ids)

    def queue_names(self) -> list[str]:
        return sorted(self.counts)

    def _time_window(self, since: datetime | None, until: datetime | None) -> tuple[int, int]:
        """Positions [lo, hi) updated at or after `since` and before `until`."""
        hi = len(self.ids) if since is None else bisect.bisect_right(self._neg_stamps, -since.timestamp())
        lo = 0 if until is None else bisect.bisect_right(self._neg_stamps, -until.timestamp())
        return lo, max(lo, hi)

    def _prefix_positions(self, prefix: str, budget: int) -> tuple[list[int], bool]:
        first = bisect.bisect_left(self._sorted_ids, prefix)
        last = bisect.bisect_left(self._sorted_ids, prefix[:-1] + chr(ord(prefix[-1]) + 1))
        capped = last - first > budget
        return sorted(self._sorted_positions[first : min(last, first + budget)]), capped

    def page(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        name: str | None = None,
        id_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 50,
        budget: int = EXAMINE_BUDGET,
    ) -> CatalogPage:
        """One page of matching ids, most recently updated first.

        With at most one of state/queue/name/id prefix (and any time range) this is a slice of one
        position list: exact, with its total. With more, the shortest list is walked and the others
        checked per entry, examining at most `budget` entries (then `partial`, total unknown).
        """
        candidates: list[tuple[Sequence[int], tuple[str, str] | None]] = []
        capped = False
        for field, wanted in (("state", state), ("queue", queue), ("name", name)):
            if wanted:
                candidates.append((self._fields[field].get(wanted, []), (field, wanted)))
        if id_prefix:
            positions, capped = self._prefix_positions(id_prefix, budget)
            candidates.append((positions, None))
        chosen_index = min(range(len(candidates)), key=lambda i: len(candidates[i][0])) if candidates else -1
        base: Sequence[int] = candidates[chosen_index][0] if candidates else range(len(self.ids))
        others = [check for i, (_, check) in enumerate(candidates) if i != chosen_index and check is not None]
        needs_prefix = bool(id_prefix) and chosen_index != len(candidates) - 1
        lo, hi = self._time_window(since, until)
        start, end = bisect.bisect_left(base, lo), bisect.bisect_left(base, hi)
        if not others and not needs_prefix:
            chosen = base[start + offset : min(end, start + offset + limit + 1)]
            ids = [self.ids[p] for p in chosen]
            return CatalogPage(ids[:limit], len(ids) > limit, None if capped else end - start, capped)
        found: list[str] = []
        skipped = 0
        examined = 0
        for index in range(start, end):
            if examined >= budget:
                capped = True
                break
            examined += 1
            position = base[index]
            if any(self._values[f][position] != v for f, v in others):
                continue
            if needs_prefix and not self.ids[position].startswith(id_prefix or ""):
                continue
            if skipped < offset:
                skipped += 1
                continue
            found.append(self.ids[position])
            if len(found) > limit:
                break
        return CatalogPage(found[:limit], len(found) > limit, None, capped)
