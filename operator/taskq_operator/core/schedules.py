"""Periodic tasks as pure arithmetic: a TaskQueue's `spec.schedules`, their slots, and what to enqueue now.

A schedule names a cron expression (5 fields, `croniter`), a time zone (IANA, `zoneinfo`; slots
follow its daylight-saving changes as croniter does) and a task. Each slot is one task whose id is
derived from the TaskQueue, the schedule name and the slot's UTC time (`slot_task_id`), so a restart,
a second replica or a replay submits the same id again and the producer's idempotent submit keeps it
one task. What was enqueued is remembered in `status.schedules` (`lastSlot`; `since` anchors a new
schedule: slots before it was first seen are never enqueued).

Missed slots (the operator was down, or the schedule's slots come faster than the timer):
`catchUp` enqueues every slot since `lastSlot` (at most `MAX_SLOTS_PER_TICK` per tick, oldest
first; the next tick continues), `skip` only the latest one and counts the others in `skipped`.
Used by `taskq_operator.schedules`; tests in `tests/unit/operator/test_schedules.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from taskq.core.limits import MISSED_SLOTS

MISSED_POLICIES = MISSED_SLOTS
MAX_SLOTS_PER_TICK = 100
SLOT_FORMAT = "%Y%m%dT%H%M%SZ"


class ScheduleError(ValueError):
    """An invalid cron expression or time zone; the message says which and why."""


@dataclass(frozen=True)
class Schedule:
    """One entry of `spec.schedules`."""

    name: str
    cron: str
    task: str
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    missed: str = "skip"


@dataclass(frozen=True)
class ScheduleState:
    """What `status.schedules` remembers of one schedule (UTC times)."""

    name: str
    since: datetime | None = None
    last_slot: datetime | None = None
    skipped: int = 0


@dataclass(frozen=True)
class Plan:
    """The slots to enqueue now (oldest first), and the state and next slot to report."""

    slots: tuple[datetime, ...]
    state: ScheduleState
    next_slot: datetime | None


def check_cron(expression: str) -> str | None:
    """Why `expression` is not a valid 5-field cron expression, or None when it is."""
    if not isinstance(expression, str) or len(expression.split()) != 5:
        return "must have 5 fields (minute hour day-of-month month day-of-week)"
    if not croniter.is_valid(expression):
        return "is not a valid cron expression"
    return None


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, or `ScheduleError`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {name!r}: {type(exc).__name__}") from None


def slot_task_id(taskqueue: str, schedule: str, slot: datetime) -> str:
    """The task id of one slot: the same for every replica, restart and replay."""
    return f"{taskqueue}.{schedule}.{slot.astimezone(UTC).strftime(SLOT_FORMAT)}"


def slots_between(schedule: Schedule, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """The slots in (`after`, `until`], oldest first, at most `limit` (UTC)."""
    tz = zone(schedule.timezone)
    iterator = croniter(schedule.cron, after.astimezone(tz))
    found: list[datetime] = []
    while len(found) < limit:
        slot = iterator.get_next(datetime).astimezone(UTC)
        if slot > until:
            break
        found.append(slot)
    return found


def next_slot(schedule: Schedule, after: datetime) -> datetime:
    """The first slot after `after` (UTC)."""
    tz = zone(schedule.timezone)
    value: datetime = croniter(schedule.cron, after.astimezone(tz)).get_next(datetime)
    return value.astimezone(UTC)


def plan(schedule: Schedule, state: ScheduleState | None, now: datetime) -> Plan:
    """What to enqueue for `schedule` at `now`, given what the status remembers (`state`)."""
    anchor = None if state is None else (state.last_slot or state.since)
    skipped = 0 if state is None else state.skipped
    if anchor is None:  # first seen: slots from now on
        fresh = ScheduleState(schedule.name, since=now, last_slot=None, skipped=skipped)
        return Plan((), fresh, next_slot(schedule, now))
    if schedule.missed == "catchUp":
        due = slots_between(schedule, anchor, now, MAX_SLOTS_PER_TICK)
    else:
        due = slots_between(schedule, anchor, now, MAX_SLOTS_PER_TICK + 1)
        if len(due) > MAX_SLOTS_PER_TICK:  # far behind: the latest slot is the last one before now
            due = [_latest_before(schedule, now)]
            skipped += MAX_SLOTS_PER_TICK
        elif due:
            skipped += len(due) - 1
            due = due[-1:]
    last = due[-1] if due else (state.last_slot if state is not None else None)
    since = state.since if state is not None else None
    return Plan(tuple(due), ScheduleState(schedule.name, since, last, skipped), next_slot(schedule, now))


def _latest_before(schedule: Schedule, now: datetime) -> datetime:
    tz = zone(schedule.timezone)
    value: datetime = croniter(schedule.cron, now.astimezone(tz)).get_prev(datetime)
    return value.astimezone(UTC)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def states_from_status(status: Mapping[str, Any] | None) -> dict[str, ScheduleState]:
    """The remembered state of each schedule in a TaskQueue's `status.schedules` (unreadable entries are skipped)."""
    entries = (status or {}).get("schedules")
    states: dict[str, ScheduleState] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            skipped = entry.get("skipped")
            states[entry["name"]] = ScheduleState(
                entry["name"],
                _time(entry.get("since")),
                _time(entry.get("lastSlot")),
                skipped if isinstance(skipped, int) and not isinstance(skipped, bool) else 0,
            )
    return states


def status_entry(schedule: Schedule, result: Plan, taskqueue: str, error: str | None = None) -> dict[str, Any]:
    """One item of `status.schedules`: last and next slot, the last slot's task id, skipped slots."""
    state = result.state
    entry: dict[str, Any] = {
        "name": schedule.name,
        "since": _iso(state.since),
        "lastSlot": _iso(state.last_slot),
        "lastTaskId": slot_task_id(taskqueue, schedule.name, state.last_slot) if state.last_slot else None,
        "nextSlot": _iso(result.next_slot),
        "skipped": state.skipped,
    }
    if error:
        entry["error"] = error
    return {key: value for key, value in entry.items() if value is not None}


def unchanged(schedules: Sequence[Schedule], plans: Sequence[Plan], states: Mapping[str, ScheduleState]) -> bool:
    """Whether nothing was enqueued and nothing new is to be remembered (no status patch needed)."""
    return all(not p.slots and states.get(s.name) == p.state for s, p in zip(schedules, plans, strict=True))
