"""Does kopf's peering let this replica act? The rule kopf applies to its peering object, pure.

kopf pauses an operator while a live peer (last seen less than its `lifetime` ago) has a higher
priority; the chart gives each replica its start time as a unique priority, so an entry with our own
priority is ourselves. The scaler's loop is no kopf handler and is not paused by kopf, so it asks this
rule (`taskq_operator.peering`) before every tick. Tested in `tests/unit/operator/test_operator_faults.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any


def _seen(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def outranked_by(status: Mapping[str, Any], priority: int, now: datetime) -> str | None:
    """The id of a live peer with a higher priority than `priority`, or None when this replica may act."""
    for peer, info in sorted(status.items()):
        if not isinstance(info, Mapping):
            continue
        seen = _seen(info.get("lastseen"))
        try:
            peer_priority, lifetime = int(info.get("priority", 0)), float(info.get("lifetime", 60))
        except (TypeError, ValueError):
            continue
        if seen is None or seen.tzinfo is None:
            continue
        if peer_priority > priority and seen + timedelta(seconds=lifetime) > now:
            return str(peer)
    return None
